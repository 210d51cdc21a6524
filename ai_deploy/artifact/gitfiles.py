"""What git sees of an app directory: the artifact of a git work tree ships only that.

Listed are the files git tracks and the untracked files it does not ignore
(`git ls-files --cached --others --exclude-standard`), so every .gitignore on the way (nested
ones too), .git/info/exclude and core.excludesFile are honoured, and an old `dist/` or scratch
file git ignores never reaches a release; a file git tracks stays even when a rule ignores it
now. A nested repository (a submodule, or a clone git leaves untracked) is listed by its own
rules. Outside a work tree there is no listing and everything on disk is a candidate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ai_deploy.artifact.errors import ArtifactError

_TIMEOUT_S = 120


@dataclass(frozen=True)
class GitListing:
    """The files git shows under a directory (paths relative to it, '/'-separated) and every
    directory that holds one of them."""

    files: frozenset[str]
    dirs: frozenset[str]

    def keeps(self, arcname: str, is_dir: bool) -> bool:
        """True when ARCNAME is a listed file (or link), or a directory with a listed file in
        it; git lists no empty directories, so neither does the artifact."""
        return arcname in (self.dirs if is_dir else self.files)


def _run_git(git: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [git, *args], cwd=cwd, capture_output=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ArtifactError(f"could not run `git {' '.join(args)}` in {cwd}: {exc}") from exc


def _looks_like_repository(dot_git: Path) -> bool:
    """Whether git would take DOT_GIT for a repository, as its discovery does: a `gitdir:`
    file, or a directory with HEAD, objects/ and refs/ (a stray `.git/HEAD` is not one)."""
    if dot_git.is_file():
        try:
            with open(dot_git, "rb") as f:
                return f.read(8) == b"gitdir: "
        except OSError:
            return True  # unreadable: let git's own error say what is wrong
    return (
        (dot_git / "HEAD").is_file()
        and (dot_git / "objects").is_dir()
        and (dot_git / "refs").is_dir()
    )


def _repository_above(src: Path) -> Path | None:
    """The nearest `.git` in SRC or above it that git would take for a repository."""
    here = Path(os.path.abspath(src))
    for directory in (here, *here.parents):
        if _looks_like_repository(directory / ".git"):
            return directory / ".git"
    return None


def _refuse_without_git(src: Path) -> None:
    dot_git = _repository_above(src)
    if dot_git is not None:
        raise ArtifactError(
            f"{src} is in a git work tree ({dot_git}) but git is not installed: install git, "
            "so the artifact leaves out what .gitignore ignores"
        )


def _in_work_tree(git: str, src: Path) -> bool:
    proc = _run_git(git, src, "rev-parse", "--is-inside-work-tree")
    if proc.returncode == 0:
        return proc.stdout.strip() == b"true"
    dot_git = _repository_above(src)
    if dot_git is None:
        return False
    reason = os.fsdecode(proc.stderr).strip() or f"exit {proc.returncode}"
    raise ArtifactError(
        f"git cannot read the work tree of {src} ({dot_git}): {reason}; "
        "fix that, so the artifact leaves out what .gitignore ignores"
    )


def _listed_files(git: str, src: Path) -> set[str]:
    proc = _run_git(git, src, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    if proc.returncode != 0:
        reason = os.fsdecode(proc.stderr).strip() or f"exit {proc.returncode}"
        raise ArtifactError(f"`git ls-files` failed in {src}: {reason}")
    files: set[str] = set()
    for raw in proc.stdout.split(b"\0"):
        rel = os.fsdecode(raw).rstrip("/")
        if not rel:
            continue
        path = src / rel
        if path.is_dir() and not path.is_symlink():
            # A submodule or an untracked clone: git lists it as one entry, not its files.
            if os.path.lexists(path / ".git"):
                files.update(f"{rel}/{inner}" for inner in _listed_files(git, path))
            continue
        files.add(rel)
    return files


def git_listing(src: Path) -> GitListing | None:
    """What git shows under SRC (see the module docstring); None when SRC is not in a git work
    tree. Raises ArtifactError when it is in one but git is missing or cannot read it."""
    git = shutil.which("git")
    if git is None:
        _refuse_without_git(src)
        return None
    if not _in_work_tree(git, src):
        return None
    files = _listed_files(git, src)
    dirs = {str(parent) for rel in files for parent in PurePosixPath(rel).parents}
    dirs.discard(".")
    return GitListing(frozenset(files), frozenset(dirs))
