"""Checks a release artifact on the deployer before any host is touched.

A bad artifact (a gzip that does not read, a member with an absolute path or `..`, a link that
points outside the release, a device file, no uv.lock, no entry module) is refused with the
member named, so the deploy stops before it changes anything on a host.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.artifact.build import ArtifactError, release_id_from_artifact, sha256_file


@dataclass(frozen=True)
class CheckedArtifact:
    """What the deploy needs to know about a good artifact."""

    path: Path
    release_id: str
    sha256: str
    lock_hash: str  # sha256 of its uv.lock: names the venv it runs in
    members: int


def entry_file(app_module: str) -> str:
    """`main:app` -> `main.py`; `pkg.app:create` -> `pkg/app.py`."""
    module = app_module.split(":", 1)[0]
    return module.replace(".", "/") + ".py"


def _normalized(name: str) -> str:
    return posixpath.normpath(name.removeprefix("./")) if name not in (".", "./") else "."


def _check_member(member: tarfile.TarInfo, where: str) -> None:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArtifactError(f"{where}: member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise ArtifactError(f"{where}: member {name!r} contains '..'")
    if member.isdev() or member.isfifo():
        raise ArtifactError(f"{where}: member {name!r} is a device or fifo, not allowed")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/"):
            raise ArtifactError(
                f"{where}: link {name!r} points to the absolute path {target!r} outside the release"
            )
        base = posixpath.dirname(_normalized(name)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            raise ArtifactError(f"{where}: link {name!r} -> {target!r} points outside the release")
    elif not (member.isfile() or member.isdir()):
        raise ArtifactError(f"{where}: member {name!r} has an unsupported type")


def check_artifact(path: Path, app_module: str = "main:app") -> CheckedArtifact:
    """Read the whole artifact and return its facts, or raise ArtifactError naming the problem."""
    where = str(path)
    if not path.is_file():
        raise ArtifactError(
            f"artifact {where} does not exist (build one: ai-deploy artifact build)"
        )
    digest = sha256_file(path)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        recorded = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
        if recorded != digest:
            raise ArtifactError(
                f"{where}: sha256 {digest} does not match {sidecar.name} ({recorded or 'empty'}); "
                "the file is damaged or was replaced: download or build it again"
            )
    lock_hash = ""
    names: set[str] = set()
    count = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                _check_member(member, where)
                count += 1
                norm = _normalized(member.name)
                names.add(norm)
                if member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    hasher = hashlib.sha256()
                    while chunk := data.read(1 << 20):
                        hasher.update(chunk)
                    if norm == "uv.lock":
                        lock_hash = hasher.hexdigest()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArtifactError(f"{where} is not a readable tar.gz: {exc}") from exc
    if "uv.lock" not in names:
        raise ArtifactError(f"{where} has no uv.lock at its top level: build it from the app root")
    entry = entry_file(app_module)
    if entry not in names:
        raise ArtifactError(
            f"{where} has no {entry} for app_module {app_module!r}: "
            "is the artifact built from the right directory?"
        )
    return CheckedArtifact(path, release_id_from_artifact(path), digest, lock_hash, count)
