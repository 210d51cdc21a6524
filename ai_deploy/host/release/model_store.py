"""The host's model blob store, for model_fetcher.py (shipped and run beside it, by root, with
the host's python3 3.8+, standard library only): each file once by its sha256 in BLOBS, with a
record written once it was hashed, and the downloads under way in PARTIAL."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time

CHUNK = 1 << 20
OK, BAD_JOB, NOSPACE, MISMATCH, FAILED = 0, 2, 3, 4, 5


class Stop(Exception):
    """The run ends: Stop(CODE, LINE) prints LINE and exits with CODE."""


def say(*words: object) -> None:
    print(" ".join(str(word) for word in words), flush=True)


def hash_file(path: str) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest


class Store:
    """The blob store's directories and records; every name in it is a checked sha256."""

    def __init__(self, root: str, blobs: str, partial: str, gid: int) -> None:
        self.root, self.blobs, self.partial, self.gid = root, blobs, partial, gid
        os.makedirs(root, 0o755, exist_ok=True)
        for path, mode, group in ((self.blobs, 0o750, gid), (self.partial, 0o700, -1)):
            if not os.path.lexists(path):
                os.mkdir(path, mode)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise Stop(FAILED, f"ERROR {path}: not a directory")
            os.chown(path, -1, group)
            os.chmod(path, mode)

    def blob(self, sha: str) -> str:
        return os.path.join(self.blobs, sha)

    def part(self, sha: str) -> str:
        return os.path.join(self.partial, sha + ".part")

    def identity(self, sha: str) -> dict:
        st = os.lstat(self.blob(sha))
        found = {"sha256": sha, "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}
        return dict(found, kind="file" if stat.S_ISREG(st.st_mode) else "other")

    def recorded(self, sha: str, size: int) -> bool:
        """True when the blob is the very file its record was written for, after hashing it."""
        try:
            with open(self.blob(sha) + ".verified", encoding="utf-8") as f:
                record = json.load(f)
            found = self.identity(sha)
        except (OSError, ValueError):
            return False
        same = isinstance(record, dict) and all(record.get(k) == v for k, v in found.items())
        return same and found["size"] == size

    def record(self, sha: str) -> None:
        record = dict(self.identity(sha), verified_at=int(time.time()))
        tmp = self.blob(sha) + ".verified.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.chown(tmp, -1, self.gid)
        os.chmod(tmp, 0o640)
        os.replace(tmp, self.blob(sha) + ".verified")
        fd = os.open(self.blobs, os.O_RDONLY | os.O_DIRECTORY)  # the renames made durable
        os.fsync(fd)
        os.close(fd)

    def install(self, sha: str) -> None:
        """The verified partial becomes the blob (synced), then its record is written."""
        os.chown(self.part(sha), -1, self.gid)
        os.chmod(self.part(sha), 0o640)
        os.replace(self.part(sha), self.blob(sha))
        self.record(sha)  # which syncs the directory: this rename too

    def check(self, item: dict) -> str:
        """Hashes the blob there: "verified" (record written), "damaged" (dropped), "missing"."""
        sha, path = item["sha256"], item["path"]
        if not os.path.lexists(self.blob(sha)):
            return "missing"
        found = self.identity(sha)
        got = "not-a-file" if found["kind"] != "file" else f"size={found['size']}"
        if found["kind"] == "file" and found["size"] == item["size"]:
            got = hash_file(self.blob(sha)).hexdigest()
        if got == sha:
            self.record(sha)
            say("VERIFIED", sha, path)
            return "verified"
        for name in (self.blob(sha) + ".verified", self.blob(sha)):
            if os.path.isdir(name) and not os.path.islink(name):
                shutil.rmtree(name)  # a directory where the blob goes, never a file of ours
            elif os.path.lexists(name):
                os.unlink(name)
        say("DAMAGED", sha, path, "got=" + got)
        return "damaged"
