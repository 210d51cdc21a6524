"""The artifact extracted on the host by a small standard-library Python script (run by the
host's python3 as root), never by tar: it checks everything the deployer checked again, as
defence in depth, and cannot write outside the release.

What the script guarantees, whatever the artifact holds:
+ limits (member count, expanded size, compression ratio) enforced before and while extracting,
  and room on the filesystems of releases/ and venvs/ (the release, plus venv_space_bytes when
  the venv for its uv.lock does not exist yet) checked before the first byte is written;
+ no absolute names, no `..`, no hard links, devices or fifos, no member written through a
  link (each directory opened with O_NOFOLLOW from the one before), files created with
  O_CREAT|O_EXCL|O_NOFOLLOW, directories created fresh, no name repeated with another type;
+ every link resolved with os.path.realpath against the release as extracted so far, and all
  of them again at the end (a later link can redirect an earlier one);
+ modes set by the script: directories 0755, files 0644 (0755 when any x bit was set), never
  setuid/setgid/sticky or group/world writable; everything owned by code_owner;
+ uv.lock (and pyproject.toml when present) regular files; REVISION and .artifact-sha256
  written with O_NOFOLLOW after any member of that name is unlinked;
+ on any refusal or error the temporary directory is removed; one JSON line on stdout says
  what happened (read as data by `extract_artifact`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from ai_deploy.host.paths import ARTIFACT_SHA256, VENV_COMPLETE
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec

# Keep this text free of absolute system paths: the tests' Remote refuses scripts naming them.
SCRIPT = r'''
import hashlib, json, os, pwd, shutil, stat, sys, tarfile, zlib

class Refused(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind

A = dict(arg.split("=", 1) for arg in sys.argv[1:])
ART, TMP = A["art"], A["tmp"]
MAX_BYTES, MAX_MEMBERS = int(A["max_bytes"]), int(A["max_members"])
MAX_RATIO, VENV_SPACE = float(A["max_ratio"]), int(A["venv_space"])
DEPLOY_WRITES = (A["revision_name"], A["sha_name"])
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC

def refuse(message):
    raise Refused("artifact-refused", message)

def parts_of(member):
    name = member.name
    if name.startswith("/"):
        refuse("member %r has an absolute path" % name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        refuse("member %r contains '..'" % name)
    if member.islnk():
        refuse("member %r is a hard link (to %r); hard links are not allowed"
               % (name, member.linkname))
    if not (member.isreg() or member.isdir() or member.issym()):
        refuse("member %r is a device, fifo or other special file, not allowed" % name)
    if member.issym() and member.linkname.startswith("/"):
        refuse("link %r points to the absolute path %r outside the release"
               % (name, member.linkname))
    if parts == [".venv"]:
        refuse("member '.venv' is made by the deploy; leave it out of the artifact")
    if not parts and not member.isdir():
        refuse("member %r names the release root" % name)
    return parts

def members(compressed):
    """Each member with its parts, the limits enforced as the archive is read."""
    count = total = 0
    with tarfile.open(ART, "r|gz") as tar:
        for member in tar:
            parts = parts_of(member)
            count += 1
            total += member.size if member.isreg() else 0
            if count > MAX_MEMBERS:
                raise Refused("artifact-too-big", "the artifact has more than %d members "
                              "(artifact_max_members=%d)" % (MAX_MEMBERS, MAX_MEMBERS))
            if total > MAX_BYTES:
                raise Refused("artifact-too-big", "the artifact expands to more than %d bytes "
                              "(at least %d at member %r; artifact_max_bytes=%d)"
                              % (MAX_BYTES, total, member.name, MAX_BYTES))
            if total > MAX_RATIO * compressed:
                raise Refused("artifact-too-big", "the artifact expands to at least %d bytes "
                              "from %d compressed (ratio above artifact_max_ratio=%g)"
                              % (total, compressed, MAX_RATIO))
            yield tar, member, parts, total

def survey(compressed):
    """Pass 1, nothing written: the limits, the expanded size and the uv.lock hash."""
    total, lock = 0, ""
    for tar, member, parts, total in members(compressed):
        if parts == ["uv.lock"] and member.isreg():
            src, digest = tar.extractfile(member), hashlib.sha256()
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
            lock = digest.hexdigest()
    return total, lock

def existing(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path

def check_space(expanded, lock):
    releases = os.path.dirname(TMP)
    venv_missing = not lock or not os.path.exists(
        os.path.join(A["venvs"], lock, A["venv_marker"]))
    needs = [(releases, expanded, "the release (expanded)")]
    if venv_missing:
        needs.append((A["venvs"], VENV_SPACE, "its new venv (venv_space_bytes)"))
    by_fs = {}
    for where, size, what in needs:
        where = existing(where)
        dev = os.stat(where).st_dev
        entry = by_fs.setdefault(dev, [where, 0, []])
        entry[1] += size
        entry[2].append("%d bytes for %s" % (size, what))
    for where, size, whats in by_fs.values():
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        if free < size:
            raise Refused("no-space", "not enough free space on the filesystem of %s: %d bytes "
                          "free, %d needed (%s)" % (where, free, size, " + ".join(whats)))

def inside(root, path):
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)

def open_dir(rootfd, parts, name, ids):
    """The directory holding member NAME, opened without following any link."""
    fd = os.dup(rootfd)
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(part, 0o700, dir_fd=fd)
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                refuse("member %r passes through the link %r" % (name, "/".join(parts[:i + 1])))
            if st is not None and not stat.S_ISDIR(st.st_mode):
                refuse("member %r is under %r, which is not a directory"
                       % (name, "/".join(parts[:i + 1])))
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = sub
            if st is None:
                os.fchmod(fd, 0o755)
                os.fchown(fd, *ids)
        return fd
    except BaseException:
        os.close(fd)
        raise

def place(tar, member, parts, root, rootfd, ids, links):
    name, last = member.name, parts[-1]
    pfd = open_dir(rootfd, parts, name, ids)
    try:
        try:
            before = os.stat(last, dir_fd=pfd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            before = None
        kind = "dir" if member.isdir() else "link" if member.issym() else "file"
        was = (None if before is None else "dir" if stat.S_ISDIR(before)
               else "link" if stat.S_ISLNK(before) else "file")
        if was is not None and (was != kind or kind == "link"):
            refuse("member %r appears again and changes its type (%s -> %s)" % (name, was, kind))
        if kind == "dir":
            if was is None:
                os.mkdir(last, 0o700, dir_fd=pfd)
            fd = os.open(last, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=pfd)
            try:
                os.fchmod(fd, 0o755)
                os.fchown(fd, *ids)
            finally:
                os.close(fd)
        elif kind == "file":
            if was is not None:
                os.unlink(last, dir_fd=pfd)
            fd = os.open(last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600,
                         dir_fd=pfd)
            try:
                src = tar.extractfile(member)
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    os.write(fd, chunk)
                os.fchmod(fd, 0o755 if member.mode & 0o111 else 0o644)
                os.fchown(fd, *ids)
            finally:
                os.close(fd)
        else:
            os.symlink(member.linkname, last, dir_fd=pfd)
            os.chown(last, *ids, dir_fd=pfd, follow_symlinks=False)
            path = os.path.join(root, *parts)
            links.append((name, member.linkname, path))
            if not inside(root, path):
                refuse("link %r -> %r resolves outside the release" % (name, member.linkname))
    finally:
        os.close(pfd)

def write_own(rootfd, name, text, ids):
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=rootfd, follow_symlinks=False).st_mode):
            refuse("member %r is a directory; the deploy writes %s itself" % (name, name))
        os.unlink(name, dir_fd=rootfd)
    except FileNotFoundError:
        pass
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644, dir_fd=rootfd)
    try:
        os.write(fd, (text + "\n").encode())
        os.fchmod(fd, 0o644)
        os.fchown(fd, *ids)
    finally:
        os.close(fd)

def extract(compressed):
    user = pwd.getpwnam(A["owner"])
    ids = (user.pw_uid, user.pw_gid)
    os.mkdir(TMP, 0o700)
    root = os.path.realpath(TMP)
    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    links = []
    try:
        for tar, member, parts, _ in members(compressed):
            if parts:
                place(tar, member, parts, root, rootfd, ids, links)
        for name, target, path in links:
            if not inside(root, path):
                refuse("link %r -> %r resolves outside the release (through a later link)"
                       % (name, target))
        for name in ("uv.lock", "pyproject.toml"):
            try:
                mode = os.stat(name, dir_fd=rootfd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                if name == "uv.lock":
                    refuse("the artifact has no uv.lock at its top level")
                continue
            if not stat.S_ISREG(mode):
                refuse("%s is not a regular file (a link or directory): ship the file itself"
                       % name)
        write_own(rootfd, DEPLOY_WRITES[0], A["revision"], ids)
        write_own(rootfd, DEPLOY_WRITES[1], A["sha256"], ids)
        os.fchmod(rootfd, 0o755)
        os.fchown(rootfd, *ids)
    finally:
        os.close(rootfd)

def main():
    result = {"ok": False}
    try:
        if os.path.lexists(TMP):
            shutil.rmtree(TMP)
        os.makedirs(os.path.dirname(TMP), exist_ok=True)
        compressed = os.path.getsize(ART)
        expanded, lock = survey(compressed)
        check_space(expanded, lock)
        extract(compressed)
        result = {"ok": True, "bytes": expanded, "lock_hash": lock}
    except Refused as exc:
        result.update(kind=exc.kind, reason=str(exc))
    except (tarfile.TarError, OSError, EOFError, zlib.error, KeyError) as exc:
        result.update(kind="extract-failed", reason="%s: %s" % (type(exc).__name__, exc))
    if not result["ok"] and os.path.lexists(TMP):
        shutil.rmtree(TMP, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["ok"] else 2

sys.exit(main())
'''


@dataclass(frozen=True)
class Extracted:
    """What the script reports: ok, or the kind of failure and its reason."""

    ok: bool
    kind: str = ""  # artifact-refused | artifact-too-big | no-space | extract-failed
    reason: str = ""
    expanded_bytes: int = 0
    lock_hash: str = ""


def extract_command(spec: Spec, artifact: str, tmp: str) -> str:
    """The shell command that runs the script; ARTIFACT and TMP are already shell-quoted."""
    layout = spec.layout
    args = {
        "max_bytes": spec.artifact_max_bytes,
        "max_members": spec.artifact_max_members,
        "max_ratio": spec.artifact_max_ratio,
        "venv_space": spec.venv_space_bytes,
        "venv_marker": VENV_COMPLETE,
        "revision_name": "REVISION",
        "sha_name": ARTIFACT_SHA256,
        "revision": spec.release_id,
        "sha256": spec.artifact_sha256 or "-",
        "owner": spec.code_owner,
    }
    words = [f"art={artifact}", f"tmp={tmp}", f"venvs={layout.venvs}"]
    words += [shlex.quote(f"{k}={v}") for k, v in args.items()]
    return f"python3 -I -c {shlex.quote(SCRIPT)} {' '.join(words)}"


def extract_artifact(remote: Remote, spec: Spec, artifact: str, tmp: str) -> Extracted:
    """Extract the uploaded ARTIFACT into TMP (both shell-quoted) on the host behind REMOTE;
    on anything but ok, TMP does not exist afterwards."""
    ran = remote.run(extract_command(spec, artifact, tmp), timeout=3600)
    try:
        raw = json.loads(ran.stdout[-1]) if ran.stdout else {}
    except ValueError:
        raw = {}
    if not raw:
        return Extracted(
            False, "extract-failed", "the extractor (python3) did not run:\n" + tail(ran.stderr)
        )
    return Extracted(
        bool(raw.get("ok")),
        str(raw.get("kind", "")),
        str(raw.get("reason", "")),
        int(raw.get("bytes", 0)),
        str(raw.get("lock_hash", "")),
    )
