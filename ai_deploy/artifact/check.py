"""Checks a release artifact on the deployer before any host is touched.

Every member is placed in a virtual copy of the release as extracting it would leave it, and
every link is resolved there through the links before it (and once more against the whole
tree), so a chain of links that each look contained but climb out together is refused. Also
refused, each with the member named: absolute paths and `..`, hard links, devices and fifos, a
member whose path passes through a link, a name repeated with another type, a linked (not
regular) uv.lock, pyproject.toml or entry module (looked for where the host imports it:
ai_deploy.artifact.importpath), and an artifact above the limits (expanded size, member
count, compression ratio), named with its numbers and the setting to change.
The host checks all of it again while extracting (ai_deploy.host.release.extract).
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_deploy.artifact.build import ArtifactError, release_id_from_artifact, sha256_file
from ai_deploy.artifact.importpath import entry_file, where_imported

__all__ = ["ArtifactLimits", "CheckedArtifact", "check_artifact", "entry_file"]

# Names in a release the deploy itself writes: a member may be a regular file there (replaced).
DEPLOY_WRITES = ("REVISION", ".artifact-sha256")
DEPLOY_LINKS = (".venv",)  # made by the deploy: the artifact may not bring one at all
_MAX_HOPS = 40  # as the kernel's limit on links followed in one lookup


@dataclass(frozen=True)
class CheckedArtifact:
    """What the deploy needs to know about a good artifact."""

    path: Path
    release_id: str
    sha256: str
    lock_hash: str  # sha256 of its uv.lock: names the venv it runs in
    members: int
    expanded_bytes: int = 0
    models: tuple[Any, ...] = ()  # ai_deploy.artifact.models_manifest.Model, from its models.toml


@dataclass(frozen=True)
class ArtifactLimits:
    """What an artifact may be (group_data: artifact_max_bytes, _members, _ratio)."""

    max_bytes: int
    max_members: int
    max_ratio: float

    @classmethod
    def from_data(cls, data: Any) -> ArtifactLimits:
        """The limits in DATA: pyinfra's host.data or a mapping of group_data names."""
        get: Callable[[str], Any] = (
            data.get if isinstance(data, Mapping) else lambda name: getattr(data, name)
        )
        return cls(
            int(get("artifact_max_bytes")),
            int(get("artifact_max_members")),
            float(get("artifact_max_ratio")),
        )

    @classmethod
    def defaults(cls) -> ArtifactLimits:
        from ai_deploy.project import group_data_defaults

        return cls.from_data(group_data_defaults())


def _parts(member: tarfile.TarInfo, where: str) -> tuple[str, ...]:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArtifactError(f"{where}: member {name!r} has an absolute path")
    parts = tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArtifactError(f"{where}: member {name!r} contains '..'")
    return parts


def _kind(member: tarfile.TarInfo, where: str) -> str:
    name = member.name
    if member.islnk():
        raise ArtifactError(
            f"{where}: member {name!r} is a hard link (to {member.linkname!r}); hard links are "
            "not allowed: ship the file itself (ai-deploy artifact build does)"
        )
    if member.isdev() or member.isfifo():
        raise ArtifactError(f"{where}: member {name!r} is a device or fifo, not allowed")
    if member.issym():
        return "link"
    if member.isdir():
        return "dir"
    if member.isfile():
        return "file"
    raise ArtifactError(f"{where}: member {name!r} has an unsupported type")


class _Tree:
    """The release as extracting the members read so far would leave it."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.kinds: dict[tuple[str, ...], str] = {(): "dir"}
        self.links: dict[tuple[str, ...], str] = {}

    def resolve(self, parts: tuple[str, ...] | list[str]) -> tuple[str, ...] | None:
        """Where PARTS (from the root) leads with every link in the tree followed, as the
        kernel would; None when it leaves the release. Missing names are taken as written."""
        todo = list(reversed(parts))
        here: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not here:
                    return None
                here.pop()
                continue
            here.append(part)
            target = self.links.get(tuple(here))
            if target is not None:
                hops += 1
                if hops > _MAX_HOPS or target.startswith("/"):
                    return None
                here.pop()
                todo.extend(reversed(target.split("/")))
        return tuple(here)

    def check_link(self, parts: tuple[str, ...], target: str) -> None:
        name = "/".join(parts)
        if target.startswith("/"):
            raise ArtifactError(
                f"{self.where}: link {name!r} points to the absolute path {target!r} "
                "outside the release"
            )
        if self.resolve([*parts[:-1], *target.split("/")]) is None:
            raise ArtifactError(
                f"{self.where}: link {name!r} -> {target!r} points outside the release "
                "(resolved through the links before it)"
            )

    def add(self, parts: tuple[str, ...], kind: str, target: str = "") -> None:
        name = "/".join(parts)
        for i in range(1, len(parts)):
            prefix = parts[:i]
            found = self.kinds.get(prefix)
            if found == "link":
                raise ArtifactError(
                    f"{self.where}: member {name!r} passes through the link {'/'.join(prefix)!r}"
                    f" (-> {self.links[prefix]!r}); members must not be written through links"
                )
            if found == "file":
                raise ArtifactError(
                    f"{self.where}: member {name!r} is under {'/'.join(prefix)!r}, "
                    "which is a file, not a directory"
                )
            self.kinds.setdefault(prefix, "dir")
        before = self.kinds.get(parts)
        if before is not None and (before != kind or kind == "link"):
            what = "changes its type" if before != kind else "is a link given twice"
            raise ArtifactError(
                f"{self.where}: member {name!r} appears again and {what} ({before} -> {kind}); "
                "a name may appear once"
            )
        if kind == "link":
            self.check_link(parts, target)
            self.links[parts] = target
        self.kinds[parts] = kind

    def recheck_links(self) -> None:
        """Every link again against the whole tree: a later link can redirect an earlier one."""
        for parts, target in self.links.items():
            self.check_link(parts, target)


def _reserved(parts: tuple[str, ...], kind: str, where: str) -> None:
    if len(parts) != 1:
        return
    name = parts[0]
    if name in DEPLOY_LINKS:
        raise ArtifactError(
            f"{where}: member {name!r} is made by the deploy (the release's venv link); "
            "leave it out of the artifact"
        )
    if name in DEPLOY_WRITES and kind != "file":
        raise ArtifactError(
            f"{where}: member {name!r} is a {kind}; the deploy writes {name} itself, "
            "so the artifact may hold it only as a regular file"
        )


def _limits_checked(
    member: tarfile.TarInfo,
    count: int,
    total: int,
    compressed: int,
    limits: ArtifactLimits,
    where: str,
) -> None:
    if count > limits.max_members:
        raise ArtifactError(
            f"{where} has more than {limits.max_members} members (artifact_max_members="
            f"{limits.max_members}); raise artifact_max_members if this is intended"
        )
    if total > limits.max_bytes:
        raise ArtifactError(
            f"{where} expands to more than {limits.max_bytes} bytes (at least {total} bytes at "
            f"member {member.name!r}; artifact_max_bytes={limits.max_bytes}); raise "
            "artifact_max_bytes if this is intended"
        )
    if total > limits.max_ratio * compressed:
        raise ArtifactError(
            f"{where} expands to at least {total} bytes from {compressed} compressed bytes "
            f"(ratio {total / max(compressed, 1):.0f}, above artifact_max_ratio="
            f"{limits.max_ratio:g}; at member {member.name!r}); raise artifact_max_ratio "
            "if this is intended"
        )


def _require_regular(tree: _Tree, name: str, missing: str, where: str) -> None:
    parts = tuple(name.split("/"))
    kind = tree.kinds.get(parts)
    if kind is None:
        raise ArtifactError(f"{where} {missing}")
    if kind != "file":
        what = f"a link (-> {tree.links[parts]!r})" if kind == "link" else f"a {kind}"
        raise ArtifactError(
            f"{where}: {name} is {what}, not a regular file: ship the file itself "
            "(ai-deploy artifact build refuses a linked one)"
        )


def check_artifact(
    path: Path,
    app_module: str = "main:app",
    limits: ArtifactLimits | None = None,
    *,
    models_allow_http: bool = False,
) -> CheckedArtifact:
    """Read the whole artifact and return its facts, or raise ArtifactError naming the problem.
    LIMITS default to group_data's; its models.toml (when it has one) is checked too."""
    where = str(path)
    limits = limits or ArtifactLimits.defaults()
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
    compressed = path.stat().st_size
    tree = _Tree(where)
    lock_hash = ""
    manifest: bytes | None = None
    count = total = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = _parts(member, where)
                kind = _kind(member, where)
                count += 1
                total += member.size if kind == "file" else 0
                _limits_checked(member, count, total, compressed, limits, where)
                if not parts:
                    if kind != "dir":
                        raise ArtifactError(f"{where}: member {member.name!r} names the root")
                    continue
                _reserved(parts, kind, where)
                tree.add(parts, kind, member.linkname)
                if kind == "file":
                    data = tar.extractfile(member)
                    assert data is not None
                    hasher = hashlib.sha256()
                    while chunk := data.read(1 << 20):
                        hasher.update(chunk)
                    if parts == ("uv.lock",):
                        lock_hash = hasher.hexdigest()
                    if parts == ("models.toml",) and member.size <= MANIFEST_MAX_BYTES:
                        again = tar.extractfile(member)
                        assert again is not None
                        manifest = again.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArtifactError(f"{where} is not a readable tar.gz: {exc}") from exc
    tree.recheck_links()
    for required in ("uv.lock", "pyproject.toml"):
        missing = f"has no {required} at its top level: build it from the app root"
        _require_regular(tree, required, missing, where)
    entry = entry_file(app_module, lambda rel: tree.kinds.get(tuple(rel.split("/"))))
    missing = (
        f"has no {where_imported(app_module)} for app_module {app_module!r} (the host imports "
        "the app from the release's root, then src/): is the artifact built from the right "
        "directory, with the right app_module?"
    )
    if entry is None:
        raise ArtifactError(f"{where} {missing}")
    _require_regular(tree, entry, missing, where)
    models = _models(tree, manifest, models_allow_http, where)
    return CheckedArtifact(
        path,
        release_id_from_artifact(path),
        digest,
        lock_hash,
        count,
        expanded_bytes=total,
        models=tuple(models),
    )


MANIFEST_MAX_BYTES = 1 << 20


def _models(tree: _Tree, manifest: bytes | None, allow_http: bool, where: str) -> list[Any]:
    """The artifact's models.toml checked (ai_deploy.artifact.models_manifest); none: no models."""
    from ai_deploy.artifact.models_manifest import ManifestError, parse_manifest

    if manifest is None:
        if tree.kinds.get(("models.toml",)) is not None:
            raise ArtifactError(
                f"{where}: models.toml is not a regular file of at most {MANIFEST_MAX_BYTES} bytes"
            )
        return []
    if tree.kinds.get(("models",)) is not None:
        raise ArtifactError(
            f"{where}: has both models.toml and a top-level models/ entry; the deploy links the "
            "manifest's models at models/<name>: move the files elsewhere or into the manifest"
        )
    try:
        return parse_manifest(manifest.decode("utf-8"), allow_http=allow_http)
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{where}: models.toml is not UTF-8 ({exc})") from exc
    except ManifestError as exc:
        raise ArtifactError(f"{where}: {exc}") from exc
