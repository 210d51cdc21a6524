"""What `ai-deploy init` can tell about an app from its files: where its FastAPI app is
(uvicorn's MODULE:APP, named as the host imports it: ai_deploy.artifact.importpath), which
packages its uv.lock holds and whether it has tests."""

from __future__ import annotations

import ast
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ai_deploy.artifact.importpath import IMPORT_DIRS, entry_file, on_disk

_SKIP = {".venv", "venv", ".git", "node_modules", "tests", "test", "dist", "build", "__pycache__"}
_PREFERRED = ("main.py", "app.py", "app/main.py", "src/main.py")


def _fastapi_names(path: Path) -> list[str]:
    """Module-level names assigned a `FastAPI(...)` call in PATH."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "FastAPI":
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def _module_of(app_dir: Path, path: Path) -> str:
    # The host imports the app from the release's root, then src/ (the project itself is not
    # installed): src/pkg/api.py is pkg.api, as it is under `uv run` and to its siblings.
    parts = path.relative_to(app_dir).with_suffix("").parts
    for d in sorted((d for d in IMPORT_DIRS if d), key=len, reverse=True):
        prefix = tuple(d.split("/"))
        if parts[: len(prefix)] == prefix and len(parts) > len(prefix):
            parts = parts[len(prefix) :]
            break
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def find_app_module(app_dir: Path) -> str | None:
    """MODULE:APP of the app's FastAPI instance (the conventional files first, then any
    module outside tests and virtual environments); None when there is none."""
    candidates = [app_dir / p for p in _PREFERRED if (app_dir / p).is_file()]
    for path in sorted(app_dir.rglob("*.py")):
        rel = path.relative_to(app_dir)
        if not any(part in _SKIP or part.startswith(".") for part in rel.parts[:-1]):
            candidates.append(path)
    for path in candidates:
        names = _fastapi_names(path)
        if names:
            # The name that imports this very file on the host: src/main.py is `main` unless a
            # main.py at the root would be imported instead (then `src.main`).
            rel = path.relative_to(app_dir).as_posix()
            for module in (_module_of(app_dir, path), ".".join(Path(rel).with_suffix("").parts)):
                if entry_file(module, on_disk(app_dir)) == rel:
                    return f"{module}:{names[0]}"
    return None


def locked_packages(app_dir: Path) -> frozenset[str]:
    """The normalized names of every package in APP_DIR's uv.lock (any group); empty when it
    has none or it cannot be read."""
    try:
        lock = tomllib.loads((app_dir / "uv.lock").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return frozenset()
    packages = lock.get("package", [])
    return frozenset(
        re.sub(r"[-_.]+", "-", str(p.get("name", ""))).lower()
        for p in packages
        if isinstance(p, dict)
    )


def has_tests(app_dir: Path) -> bool:
    """Whether APP_DIR holds a file pytest collects by default (test_*.py or *_test.py),
    outside virtual environments and hidden directories."""
    for path in app_dir.rglob("*.py"):
        rel = path.relative_to(app_dir).parts
        if any(part in _NOT_SOURCE or part.startswith(".") for part in rel[:-1]):
            continue
        if path.name.startswith("test_") or path.stem.endswith("_test"):
            return True
    return False


_NOT_SOURCE = {".venv", "venv", "node_modules", "dist", "build", "__pycache__"}

__all__ = ["find_app_module", "has_tests", "locked_packages"]
