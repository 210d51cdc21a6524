"""Write what an app repository keeps: ai-deploy.toml and .github/workflows/ai-cicd.yml.
Nothing is overwritten without FORCE; nothing is written when any file is refused."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ai_deploy.appinit.detect import find_app_module
from ai_deploy.appinit.lint_test import LintTest
from ai_deploy.appinit.next_steps import Target, next_steps
from ai_deploy.appinit.settings_file import render_settings_file
from ai_deploy.appinit.workflow import WORKFLOW_PATH, python_of, render_workflow
from ai_deploy.settings.appfile import FILENAME

PER_RUN = ("artifact", "rollback", "restart")  # set per run with --data, not kept in a file


class InitError(Exception):
    """A file exists (and no --force), or the directory is not an app; the message says so."""


def _app_name(app_dir: Path) -> str:
    pyproject = app_dir / "pyproject.toml"
    found = (
        re.search(r'(?m)^name\s*=\s*"([^"]+)"', pyproject.read_text())
        if pyproject.is_file()
        else None
    )
    name = found.group(1) if found else app_dir.resolve().name
    # app_name's rule (ai_deploy.settings.rules): lower case, [a-z0-9._-], a letter or digit first
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("._-") or "app"


def repository_of(app_dir: Path) -> str | None:
    """OWNER/REPO of the `origin` remote when it is on GitHub."""
    try:
        url = subprocess.run(
            ["git", "-C", str(app_dir), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"github\.com[:/]([\w.-]+/[\w.-]+?)(?:\.git)?$", url)
    return found.group(1) if found else None


def init_app(app_dir: Path, target: Target, *, force: bool = False) -> str:
    """Write the files into APP_DIR; returns what to print (the next steps)."""
    if not (app_dir / "pyproject.toml").is_file():
        raise InitError(
            f"{app_dir} has no pyproject.toml: run `ai-deploy init` in the app's repository "
            "(the FastAPI app with pyproject.toml and uv.lock)"
        )
    settings = app_dir / FILENAME
    workflow = app_dir / WORKFLOW_PATH
    existing = [p for p in (settings, workflow) if p.exists()]
    if existing and not force:
        raise InitError(
            "not overwriting "
            + ", ".join(str(p.relative_to(app_dir)) for p in existing)
            + ": use --force to replace (compare with `git diff` afterwards)"
        )
    app = _app_name(app_dir)
    found = find_app_module(app_dir)
    if found is None:
        raise InitError(
            f"no FastAPI app found in {app_dir} (a module-level `app = FastAPI(...)`): ai-deploy "
            "serves it with uvicorn MODULE:APP; create it, then run init again"
        )
    notes: list[str] = []
    if not (app_dir / "uv.lock").is_file():
        notes.append("no uv.lock yet: run `uv lock` and commit it (hosts install exactly it)")
    try:
        lint_test = LintTest.of(app_dir)
        workflow_text = render_workflow(app, target.environment, python_of(app_dir), lint_test)
    except ValueError as exc:
        raise InitError(str(exc)) from None
    overrides: dict[str, str] = {}
    if app != "ai-server":
        overrides["app_name"] = app
    if found != "main:app":
        overrides["app_module"] = found
    settings_text = render_settings_file(overrides or None, PER_RUN)
    settings.write_text(settings_text)
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text(workflow_text)
    if lint_test.skipped:
        notes.append(
            f"the workflow's Test step is skipped: {lint_test.skipped} "
            "(its comment says how to turn it on)"
        )
    said = [f"the app: {found} (app_module)", *notes]
    return "\n".join(said) + "\n" + next_steps(target, [FILENAME, str(WORKFLOW_PATH)])


__all__ = ["InitError", "init_app", "repository_of"]
