"""The deterministic release artifact: a tar.gz of an app directory, as the app's CI builds it.

The same source tree always gives the same bytes (sorted members, fixed mtimes and owners,
normalized modes, a gzip header without time or name), and the release id derived from it
depends only on the paths, modes and contents of what is shipped. Secrets (`.env*`), virtual
environments, caches and VCS data are never shipped. In a git work tree only what git sees is
shipped (ai_deploy.artifact.gitfiles: nothing git ignores unless it tracks it); a build can
first refuse a uv.lock that no longer matches pyproject.toml (ai_deploy.artifact.lockcheck).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ai_deploy.artifact.errors import ArtifactError
from ai_deploy.artifact.gitfiles import GitListing, git_listing
from ai_deploy.artifact.importpath import entry_file, on_disk, where_imported
from ai_deploy.artifact.lockcheck import check_lock
from ai_deploy.artifact.naming import shipped_name, source_name

# Names left out at any depth, whatever their type (a `.venv` may be a symlink, `.git` a file).
EXCLUDED_NAMES = frozenset({".venv", ".git", "__pycache__"})
EXCLUDED_PREFIXES = (".env",)  # .env, .env.local, .env.production, ...
EXCLUDED_SUFFIXES = (".pyc",)
REQUIRED_FILES = ("pyproject.toml", "uv.lock")
ID_LENGTH = 12
# Every member gets this mtime, so the archive does not depend on when files were touched.
FIXED_MTIME = 0

_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}"
_ID_RE = re.compile(_ID_PATTERN)
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class _Member:
    arcname: str
    path: Path
    kind: bytes  # tarfile type flag: REGTYPE, DIRTYPE or SYMTYPE
    mode: int
    size: int = 0
    linkname: str = ""


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at PATH, read in chunks (memory stays flat for big files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def validate_artifact_id(artifact_id: str) -> str:
    """Return ARTIFACT_ID unchanged when it is 1-64 characters of [A-Za-z0-9._-] not starting
    with '.' or '-' (safe as a file name and a release directory); else raise ArtifactError."""
    if not _ID_RE.fullmatch(artifact_id):
        raise ArtifactError(
            f"artifact id {artifact_id!r} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "not starting with '.' or '-' (for example a git SHA)"
        )
    return artifact_id


def artifact_filename(artifact_id: str, name: str) -> str:
    """The file name an artifact with this id gets: `<name>-<id>.tar.gz`."""
    return f"{name}-{artifact_id}.tar.gz"


def release_id_from_artifact(path: Path, name: str | None = None) -> str:
    """The release id of the artifact at PATH: the `<id>` in a file named `<name>-<id>.tar.gz`
    (as build_artifact names it, or a git SHA set by CI; NAME: the app's name the archive's
    pyproject.toml gives, ai_deploy.artifact.naming); for any other file name, the first 12
    hex characters of the file's sha256. The same artifact gives the same id on every host."""
    path = Path(path)
    name = name if name is not None else shipped_name(path)
    match = name and re.fullmatch(rf"{re.escape(name)}-({_ID_PATTERN})\.tar\.gz", path.name)
    if match:
        return match.group(1)
    try:
        return sha256_file(path)[:ID_LENGTH]
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror or exc}") from exc


def _excluded(entry_name: str) -> bool:
    return (
        entry_name in EXCLUDED_NAMES
        or entry_name.startswith(EXCLUDED_PREFIXES)
        or entry_name.endswith(EXCLUDED_SUFFIXES)
    )


def _check_source(src: Path, app_module: str) -> str:
    """SRC checked as a source tree; returns the file APP_MODULE is imported from there."""
    if not src.exists():
        raise ArtifactError(
            f"source directory {src} does not exist: pass the app's directory "
            "(the one holding pyproject.toml and uv.lock)"
        )
    if not src.is_dir():
        raise ArtifactError(f"source {src} is not a directory: pass the app's directory")
    entry = entry_file(app_module, on_disk(src))
    for required in (*REQUIRED_FILES, *([entry] if entry else [])):
        path = src / required
        if path.is_symlink():
            # The deploy refuses these as links (a linked uv.lock once emptied the lock hash
            # and wiped the live venv): never build what it would refuse.
            raise ArtifactError(
                f"{path} is a symbolic link (-> {os.readlink(path)}): the deploy needs "
                f"{required} as a regular file; replace the link with the file itself"
            )
    for required in REQUIRED_FILES:
        if not (src / required).is_file():
            fix = "run `uv lock` there and commit it" if required == "uv.lock" else "add one"
            raise ArtifactError(f"{src / required} is missing: the app needs {required}; {fix}")
    if entry is None or not (src / entry).is_file():
        raise ArtifactError(
            f"app_module {app_module!r} is missing from {src}: no {where_imported(app_module)}; "
            "uvicorn imports the app from the release's root, then src/ (set app_module in "
            "ai-deploy.toml or pass --app-module MODULE:APP)"
        )
    return entry


def _symlink_target(src_real: Path, path: Path, arcname: str) -> str:
    """The link's target when it is relative and resolves inside the source tree."""
    target = os.readlink(path)
    if os.path.isabs(target):
        raise ArtifactError(
            f"symlink {arcname} points to the absolute path {target}: "
            "only relative links inside the source directory can be shipped"
        )
    # Checked both by name and on disk: a link through another link (`sub/up -> ..`) can leave
    # the tree even when its text alone looks contained.
    lexical = os.path.normpath(os.path.join(os.path.dirname(arcname), target))
    resolved = Path(os.path.realpath(path.parent / target))
    if lexical == ".." or lexical.startswith("../") or not resolved.is_relative_to(src_real):
        raise ArtifactError(
            f"symlink {arcname} -> {target} leaves the source directory: "
            "replace it with the file itself or a link inside the tree"
        )
    return target


def _check_listed(src: Path, listing: GitListing, entry: str) -> None:
    for required in (*REQUIRED_FILES, entry):
        # A missing entry module is the deploy's to report; here only one git would drop.
        if os.path.lexists(src / required) and required not in listing.files:
            raise ArtifactError(
                f"{src / required} is ignored by git and not tracked, so a checkout (and the "
                f"artifact) would lack it: commit it (`git add -f {required}` in {src}) or drop "
                f"the rule that ignores it (`git check-ignore -v {required}` names it)"
            )


def _collect(src: Path, skip: str | None, listing: GitListing | None) -> list[_Member]:
    """Every member to ship, parents before children, in a fixed order; SKIP is an arcname
    left out with everything under it (the output directory when it lies inside SRC); with a
    LISTING, only what it keeps."""
    src_real = Path(os.path.realpath(src))
    members: list[_Member] = []

    def walk(directory: Path, prefix: str) -> None:
        for entry_name in sorted(os.listdir(directory)):
            if _excluded(entry_name):
                continue
            path = directory / entry_name
            arcname = f"{prefix}{entry_name}"
            if arcname == skip:
                continue
            st = os.lstat(path)
            if listing is not None and not listing.keeps(arcname, stat.S_ISDIR(st.st_mode)):
                continue
            if stat.S_ISLNK(st.st_mode):
                target = _symlink_target(src_real, path, arcname)
                members.append(_Member(arcname, path, tarfile.SYMTYPE, 0o777, linkname=target))
            elif stat.S_ISDIR(st.st_mode):
                members.append(_Member(arcname, path, tarfile.DIRTYPE, 0o755))
                walk(path, f"{arcname}/")
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                members.append(_Member(arcname, path, tarfile.REGTYPE, mode, size=st.st_size))
            else:
                raise ArtifactError(
                    f"{arcname} in {src} is not a regular file, directory or symlink: "
                    "remove it from the source directory"
                )

    walk(src, "")
    return members


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


class _HashingReader:
    """A file object that feeds what tarfile reads from it into the content digest."""

    def __init__(self, f: BinaryIO, digest: _Digest) -> None:
        self._f = f
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._digest.update(data)
        return data


def _tarinfo(member: _Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.arcname)
    info.type = member.kind
    info.mode = member.mode
    info.size = member.size
    info.linkname = member.linkname
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(members: list[_Member], out: BinaryIO) -> str:
    """Write MEMBERS as a gzipped tar to OUT; return the hex digest of their content."""
    digest = hashlib.sha256()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in members:
            # Length-prefixed fields, so no two different trees can frame to the same bytes.
            for field in (member.kind, member.arcname.encode("utf-8", "surrogateescape")):
                digest.update(len(field).to_bytes(8, "big") + field)
            digest.update(member.mode.to_bytes(4, "big"))
            info = _tarinfo(member)
            if member.kind == tarfile.REGTYPE:
                digest.update(member.size.to_bytes(8, "big"))
                try:
                    with open(member.path, "rb") as f:
                        tar.addfile(info, _HashingReader(f, digest))
                except OSError as exc:
                    raise ArtifactError(
                        f"could not read {member.path} ({exc}): "
                        "was it changed while the artifact was being built?"
                    ) from exc
            else:
                link = member.linkname.encode("utf-8", "surrogateescape")
                digest.update(len(link).to_bytes(8, "big") + link)
                tar.addfile(info)
    return digest.hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_artifact(
    src: Path,
    outdir: Path,
    artifact_id: str | None = None,
    name: str | None = None,
    app_module: str = "main:app",
    lock_check: bool = False,
) -> Path:
    """Pack the app directory SRC into OUTDIR/<name>-<id>.tar.gz and return its path; NAME
    defaults to the app's name in SRC/pyproject.toml (ai_deploy.artifact.naming).

    Guarantees:
    + SRC must be a directory holding pyproject.toml and uv.lock, else ArtifactError; neither
      they nor the entry module of APP_MODULE (looked for where the host imports it: the
      root, then src/; ai_deploy.artifact.importpath) may be a symbolic link.
    + With LOCK_CHECK, a uv.lock that `uv lock --check` finds stale is refused (ArtifactError
      naming SRC and the fix) before the tree is packed.
    + In a git work tree only what git lists is shipped: nothing it ignores unless it tracks
      it, no empty directories; pyproject.toml, uv.lock and the entry module must be listed.
    + `.venv`, `.git`, `__pycache__`, `*.pyc` and every `.env*` are left out at any depth, even
      when git tracks them, and so is OUTDIR when it lies inside SRC.
    + Members are stored as `main.py`, `pkg/mod.py` (no `./`, no entry for the root), sorted,
      with mtime 0, owner 0:0 without names, modes 0644 (0755 for executables and directories);
      only regular files, directories and relative symlinks that stay inside SRC are allowed.
    + The same tree gives byte-identical output; `<id>` is ARTIFACT_ID (validated) or the first
      12 hex characters of a sha256 over the members' paths, modes and contents, so touching
      files without changing them keeps the id.
    + The archive appears complete or not at all (temp file, then rename), and
      `<file>.sha256` is written beside it in `sha256sum` format.
    """
    src = Path(src)
    outdir = Path(outdir)
    name = source_name(src) if name is None else name
    if not _ID_RE.fullmatch(name):
        raise ArtifactError(
            f"artifact name {name!r} is invalid: use characters of A-Z a-z 0-9 . _ -, "
            "not starting with '.' or '-'"
        )
    if artifact_id is not None:
        validate_artifact_id(artifact_id)
    entry = _check_source(src, app_module)
    src_real, out_real = src.resolve(), outdir.resolve()
    if out_real == src_real:
        raise ArtifactError(
            f"output directory {outdir} is the source directory: write the artifact elsewhere "
            f"(for example {src / 'dist'}), or earlier artifacts would be packed into it"
        )
    skip = out_real.relative_to(src_real).as_posix() if out_real.is_relative_to(src_real) else None
    if lock_check:
        check_lock(src)
    listing = git_listing(src)
    if listing is not None:
        _check_listed(src, listing, entry)
    members = _collect(src, skip, listing)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create output directory {outdir}: {exc}") from exc

    fd, tmp_name = tempfile.mkstemp(dir=outdir, prefix=f".{name}-", suffix=".tar.gz.tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            content_digest = _write_tar(members, out)
        os.chmod(tmp, 0o644)
        final = outdir / artifact_filename(artifact_id or content_digest[:ID_LENGTH], name)
        checksum = sha256_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_text_atomic(final.with_name(final.name + ".sha256"), f"{checksum}  {final.name}\n")
    return final
