"""The lock check before a build: uv.lock must still be what `uv lock` makes of pyproject.toml.

The host installs with `uv sync --frozen`, which takes uv.lock as it is: a dependency added to
pyproject.toml without running `uv lock` would silently not be installed. So a build first runs
`uv lock --check` in the app directory (uv from PATH, or beside the running Python).

Offline first: `uv lock --check --offline` settles a lock that matches its pyproject.toml from
the two files alone, with no index and an empty uv cache. Only when that fails (a stale lock, or
one uv cannot validate without fetching, such as a git dependency missing from the cache) is
`uv lock --check` run again with uv's normal index access, and the build is refused when that
fails too; uv's own last lines are quoted, so a network failure reads as one. UV_OFFLINE=1
keeps both runs offline. AI_DEPLOY_NO_LOCK_CHECK=1 skips the check (the build says so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ai_deploy.artifact.errors import ArtifactError

NO_LOCK_CHECK_ENV = "AI_DEPLOY_NO_LOCK_CHECK"
_SKIP_VALUES = ("1", "true", "yes")
_KEEP_VALUES = ("", "0", "false", "no")
_TIMEOUT_S = 300  # a resolution against a slow index; uv's own HTTP timeouts are shorter
_TAIL_LINES = 6


def lock_check_skipped() -> bool:
    """True when AI_DEPLOY_NO_LOCK_CHECK is 1/true/yes; False when unset or 0/false/no; any
    other value raises ArtifactError naming it."""
    value = os.environ.get(NO_LOCK_CHECK_ENV, "").strip().lower()
    if value in _SKIP_VALUES:
        return True
    if value in _KEEP_VALUES:
        return False
    raise ArtifactError(
        f"{NO_LOCK_CHECK_ENV}={os.environ[NO_LOCK_CHECK_ENV]!r} is not understood: "
        "set it to 1 to build without checking uv.lock, or unset it"
    )


def find_uv() -> str | None:
    """The uv on PATH, else one installed beside the running Python (an unactivated venv)."""
    return shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:]) or "no output"


def _uv_lock_check(uv: str, src: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [uv, "lock", "--check", *extra]
    try:
        return subprocess.run(
            command, cwd=src, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ArtifactError(
            f"`{' '.join(command[1:])}` in {src} did not finish within {_TIMEOUT_S}s: "
            f"check the package index is reachable, or set {NO_LOCK_CHECK_ENV}=1 to build "
            "without the lock check"
        ) from exc
    except OSError as exc:
        raise ArtifactError(f"could not run {uv} to check {src / 'uv.lock'}: {exc}") from exc


def check_lock(src: Path) -> None:
    """Return when SRC/uv.lock matches SRC/pyproject.toml by `uv lock --check`; else raise
    ArtifactError naming the directory and the fix (`uv lock` there, then commit uv.lock).
    Raises ArtifactError too when no uv is found, saying how to install it or skip the check."""
    uv = find_uv()
    if uv is None:
        raise ArtifactError(
            f"uv is needed to check that {src / 'uv.lock'} matches {src / 'pyproject.toml'} "
            "(`uv lock --check`) and was not found on PATH: install uv "
            "(https://docs.astral.sh/uv/getting-started/installation/), or set "
            f"{NO_LOCK_CHECK_ENV}=1 to build without the check"
        )
    if _uv_lock_check(uv, src, "--offline").returncode == 0:
        return
    online = _uv_lock_check(uv, src)
    if online.returncode == 0:
        return
    raise ArtifactError(
        f"uv.lock in {src} does not match its pyproject.toml, or uv could not check it "
        f"(`uv lock --check` exited {online.returncode}: {_tail(online)}): run `uv lock` in {src}, "
        "commit uv.lock and build again; the host installs exactly what uv.lock says"
    )
