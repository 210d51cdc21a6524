"""The host layout named once (ai_deploy.host.paths.Layout): built from host data in one
function, and the only place the model store's directories are spelled."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ai_deploy.host.paths import Layout

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
STORE_PATH = re.compile(r"/blobs\b|\bblobs/|/\.partial\b")  # a path into the store


def test_the_model_store_paths_are_under_app_root_and_quoted() -> None:
    layout = Layout.from_data({"app_root": "/srv/my app/", "app_name": "a", "app_log_dir": "/l"})
    assert layout.model_store_dir == "/srv/my app/models"
    assert layout.model_blobs_dir == "/srv/my app/models/blobs"
    assert layout.model_partials_dir == "/srv/my app/models/.partial"
    assert layout.model_store == "'/srv/my app/models'"
    assert layout.model_blobs == "'/srv/my app/models/blobs'"


def _code_strings(path: Path) -> list[str]:
    """The string literals of PATH's code (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_only_paths_spells_the_model_store() -> None:
    spelled = sorted(
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "ai_deploy").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]
        if any(STORE_PATH.search(s) for s in _code_strings(path))
    )
    assert spelled == []  # paths.py names its parts; every path is joined from those


def test_layouts_are_built_from_data_in_one_place() -> None:
    """No module but paths.py calls Layout(...) with settings of its own."""
    builders = sorted(
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "ai_deploy").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]
        if re.search(r"\bLayout\((?!\))", path.read_text())
    )
    assert builders == ["ai_deploy/host/facts.py"]  # from a fact's own arguments
