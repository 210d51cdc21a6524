"""The app's `.github/workflows/ai-cicd.yml`, rendered from the template beside this module."""

from __future__ import annotations

import re
from pathlib import Path

from ai_deploy.appinit.lint_test import LintTest

TEMPLATE = Path(__file__).with_name("ai-cicd.yml.in")
WORKFLOW_PATH = Path(".github") / "workflows" / "ai-cicd.yml"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def render_workflow(app: str, environment: str, python: str, lint_test: LintTest) -> str:
    """The workflow for APP (its artifact's and concurrency group's name), deploying to the
    GitHub environment ENVIRONMENT (also the ai-deploy.toml environment), testing on PYTHON
    with the steps of LINT_TEST."""
    for what, value in (("app name", app), ("environment", environment)):
        if not _NAME_RE.fullmatch(value):
            raise ValueError(
                f"{what} {value!r}: use letters, digits, '.', '_' and '-' (it names GitHub "
                "artifacts and environments)"
            )
    if not re.fullmatch(r"3\.\d+", python):
        raise ValueError(f"python {python!r}: expected a version like 3.11")
    text = TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (
        ("@@LINT_TEST@@", lint_test.steps()),
        ("@@APP@@", app),
        ("@@ENV@@", environment),
        ("@@PYTHON@@", python),
    ):
        text = text.replace(placeholder, value)
    return text


def python_of(app_dir: Path) -> str:
    """The Python the app's tests run on: .python-version, else the lower bound of
    requires-python in pyproject.toml, else 3.11."""
    pinned = app_dir / ".python-version"
    if pinned.is_file():
        found = re.match(r"\s*(3\.\d+)", pinned.read_text())
        if found:
            return found.group(1)
    pyproject = app_dir / "pyproject.toml"
    if pyproject.is_file():
        found = re.search(r'requires-python\s*=\s*"[^"]*?(3\.\d+)', pyproject.read_text())
        if found:
            return found.group(1)
    return "3.11"


__all__ = ["TEMPLATE", "WORKFLOW_PATH", "python_of", "render_workflow"]
