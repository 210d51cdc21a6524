"""Where the app's own code is imported from on a host, named once for every layout uv makes.

The shared venv (venvs/<lock hash>, ai_deploy.host.release.venv) holds the locked dependencies
only: the project itself is not installed there, so one venv serves every release with the same
uv.lock. The app's code is imported from the release instead, from IMPORT_DIRS in this order:
its root (a flat `main.py` or a package at the root) and then `src/` (`uv init --package`,
whatever the build backend). uvicorn imports from its working directory, the release, and the
unit adds the rest with `PYTHONPATH` (relative, so it resolves inside the release the unit
started in, never through a later `current`); `ai-deploy exec` sets the same path; the artifact
checks look for the app module's file in the same places, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

IMPORT_DIRS = ("", "src")  # release-relative; "" is the release itself


def entry_file(app_module: str, kind: Callable[[str], str | None]) -> str | None:
    """The release-relative file APP_MODULE's module (`pkg.api` of `pkg.api:app`) is imported
    from, resolved the way Python's path finder does over IMPORT_DIRS; None when the import
    would fail or finds no file. KIND tells what a release-relative path is: "file", "dir",
    "link" or None (absent).

    Each name is looked up in the directories of the one before: the first directory with a
    package (`name/__init__.py`) or module (`name.py`) wins, even over a later one (a package
    at the root hides src/'s); directories without `__init__.py` (namespace packages) are used
    only when no directory has either. A link counts as present, so the caller can refuse it."""
    names = app_module.split(":", 1)[0].split(".")
    search = list(IMPORT_DIRS)
    for i, name in enumerate(names):
        last = i == len(names) - 1
        portions: list[str] = []
        for d in search:
            base = f"{d}/{name}" if d else name
            if kind(f"{base}/__init__.py") is not None:
                if last:
                    return f"{base}/__init__.py"
                search = [base]
                break
            if kind(f"{base}.py") is not None:
                # A module has no submodules: `pkg.api` with a `pkg.py` does not import.
                return f"{base}.py" if last else None
            if kind(base) == "dir":
                portions.append(base)
        else:
            if last or not portions:
                return None
            search = portions
    return None


def on_disk(root: Path) -> Callable[[str], str | None]:
    """entry_file's KIND for a tree on disk at ROOT (a link is "link", not followed)."""

    def kind(rel: str) -> str | None:
        path = root / rel
        if path.is_symlink():
            return "link"
        return "dir" if path.is_dir() else "file" if path.exists() else None

    return kind


def where_imported(app_module: str) -> str:
    """The places APP_MODULE's file is looked for, for a message: `pkg/api.py or
    src/pkg/api.py (or a package's __init__.py there)`."""
    path = app_module.split(":", 1)[0].replace(".", "/")
    places = [f"{d}/{path}.py" if d else f"{path}.py" for d in IMPORT_DIRS]
    return " or ".join(places) + " (or a package's __init__.py there)"


def service_pythonpath() -> str:
    """PYTHONPATH for the unit, relative to its working directory (the release): IMPORT_DIRS
    after the root, which uvicorn imports from already."""
    return ":".join(d for d in IMPORT_DIRS if d)


def exec_pythonpath(release: str) -> str:
    """PYTHONPATH for a command run in RELEASE (an absolute path or a shell word expanding to
    one): every one of IMPORT_DIRS, the root included, as the service has them."""
    return ":".join(f"{release}/{d}" if d else release for d in IMPORT_DIRS)


__all__ = [
    "IMPORT_DIRS",
    "entry_file",
    "exec_pythonpath",
    "on_disk",
    "service_pythonpath",
    "where_imported",
]
