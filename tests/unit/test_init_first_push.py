"""What `ai-deploy init` writes for an app that has no tests yet: the lint-test job runs what the
app has (decided from its uv.lock and its files) and says what it skipped; the file stays clean
for actionlint and zizmor; every placeholder left in the printed set-up is warned about."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ai_deploy.appinit.lint_test import PYTEST, RUFF_LOCKED, RUFF_PINNED, LintTest
from tests.unit.test_app_layouts import LAYOUTS, add_app, uv_init
from tests.unit.test_workflow import run_actionlint, run_zizmor

pytestmark = pytest.mark.unit

FILLED = (
    "--project", "proj-1", "--zone", "asia-northeast3-a", "--instance", "vm-1",
    "--repository", "o/r",
)  # fmt: skip


def lock(*names: str) -> str:
    """A uv.lock holding packages NAMES (what LintTest reads of it)."""
    body = "".join(f'\n[[package]]\nname = "{n}"\nversion = "1.0"\n' for n in names)
    return f'version = 1\nrequires-python = ">=3.11"\n{body}'


def _init(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ai_deploy.cli", "init", *args],
        cwd=app,
        env={"PATH": "/usr/bin:/bin", "HOME": str(app)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def new_app(tmp_path: Path) -> Path:
    """`uv init --package` with an API and a lock of its runtime dependencies only."""
    app = uv_init(tmp_path / "sentiment-svc", LAYOUTS["package"])
    add_app(app)
    (app / "uv.lock").write_text(lock("fastapi", "uvicorn", "sentiment-svc"))
    return app


def _lint_test_steps(workflow: Path) -> dict[str, str]:
    steps = yaml.safe_load(workflow.read_text())["jobs"]["lint-test"]["steps"]
    return {s["name"]: s.get("run", "") for s in steps}


def test_a_new_apps_workflow_skips_tests_saying_why_and_stays_clean(new_app: Path) -> None:
    proc = _init(new_app, *FILLED)
    assert proc.returncode == 0, proc.stderr
    assert "the workflow's Test step is skipped: the app has no tests" in proc.stdout
    workflow = new_app / ".github" / "workflows" / "ai-cicd.yml"
    steps = _lint_test_steps(workflow)
    assert steps["Lint"] == RUFF_PINNED
    assert "Test" not in steps and all(PYTEST not in run for run in steps.values())
    # The comment says what was skipped, why, and how to turn it on.
    text = " ".join(line.strip(" #") for line in workflow.read_text().splitlines())
    assert "Test is skipped: the app has no tests (test_*.py, *_test.py) and pytest is" in text
    assert f"then set the Test step's run to `{PYTEST}`" in text
    # The step runs in GitHub's shell, says so as a notice, and succeeds.
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", steps["Test (skipped)"]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert re.fullmatch(r"::notice title=Tests skipped::the app has no tests .*\n", done.stdout)
    assert run_actionlint(workflow) == []
    assert run_zizmor(workflow) == []


@pytest.mark.parametrize(
    "tests,locked,lint,test",
    [
        (True, ("pytest",), RUFF_PINNED, PYTEST),
        (True, ("pytest", "ruff"), RUFF_LOCKED, PYTEST),
        (True, (), RUFF_PINNED, None),  # tests, but nothing to run them with
        (False, ("pytest",), RUFF_PINNED, None),  # pytest exits 5 when it collects nothing
        (False, ("ruff",), RUFF_LOCKED, None),
    ],
)
def test_what_the_job_runs_follows_the_lock_and_the_tests(
    new_app: Path, tests: bool, locked: tuple[str, ...], lint: str, test: str | None
) -> None:
    (new_app / "uv.lock").write_text(lock("fastapi", *locked))
    if tests:
        (new_app / "tests").mkdir()
        (new_app / "tests" / "test_api.py").write_text("def test_x():\n    pass\n")
    checks = LintTest.of(new_app)
    assert (checks.lint, checks.test) == (lint, test)
    assert (checks.skipped is None) == (test is not None)


def test_test_files_outside_the_app_do_not_count(new_app: Path) -> None:
    """A venv's or a hidden directory's test files are not the app's tests."""
    (new_app / "uv.lock").write_text(lock("pytest"))
    for where in (".venv/lib/python3.11/site-packages/x", ".tox/py", "node_modules/y"):
        (new_app / where).mkdir(parents=True)
        (new_app / where / "test_inside.py").write_text("def test_x():\n    pass\n")
    assert LintTest.of(new_app).test is None
    (new_app / "src" / "sentiment_svc" / "scoring_test.py").write_text("")
    assert LintTest.of(new_app).test == PYTEST


def test_every_placeholder_left_is_warned_with_how_to_fill_it(new_app: Path) -> None:
    proc = _init(new_app)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    for placeholder, flag in (
        ("PROJECT_ID", "--project"),
        ("ZONE", "--zone"),
        ("INSTANCE", "--instance"),
        ("OWNER/REPO", "--repository OWNER/REPO"),
    ):
        assert placeholder in proc.stdout  # it is really left in the printed commands
        (said,) = [w for w in warnings if f"warning: {placeholder} is a placeholder" in w]
        assert flag in said, said
    assert any("has no GitHub `origin` remote" in w for w in warnings)
    assert any("AI_DEPLOY_SOURCE is a placeholder" in w for w in warnings)
    assert len(warnings) == 5, warnings


def test_a_github_remote_and_the_flags_leave_only_the_tool_source(new_app: Path) -> None:
    subprocess.run(["git", "init", "-q", str(new_app)], check=True)
    remote = "git@github.com:dojangkok/sentiment-svc.git"
    subprocess.run(["git", "-C", str(new_app), "remote", "add", "origin", remote], check=True)
    proc = _init(new_app, *FILLED[:-2])  # no --repository: the remote names it
    assert proc.returncode == 0, proc.stderr
    assert "REPOSITORY_ID=$(gh api repos/dojangkok/sentiment-svc --jq .id)" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "AI_DEPLOY_SOURCE" in warnings[0], warnings
