"""The workflow `ai-deploy init` writes for a plain `uv init --package` app (`uv add fastapi
uvicorn`, an API in src/, no tests and no pytest in its lock), rehearsed on its first pull
request into main with tests/gcp/rehearsal.py's runner, as test_gcp_workflow_rehearsal.py does
for the example app: lint-test and build-and-artifact run every step as written and are green
(the Test step says why it runs no tests), deploy is skipped as the workflow says for pull
requests. Deploying such an app is tests/e2e/test_app_layouts.py. Needs the package registry
through uv (the lock, the app's dependencies, ruff and ai-deploy's own)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ai_deploy.artifact.check import check_artifact
from ai_deploy.settings.appfile import parse_app_settings
from tests.gcp.rehearsal import BASE_PATH, Contexts, Runner
from tests.gcp.test_gcp_workflow_rehearsal import (  # noqa: F401 - ai_deploy_wheel: a fixture
    _failed_steps,
    _git,
    _step,
    ai_deploy_wheel,
    init_and_commit,
    real_uv,
    setup_uv,
)

pytestmark = [pytest.mark.gcp]

PKG = "sentiment_svc"
API = f"""from fastapi import FastAPI

from {PKG}.scoring import score

app = FastAPI()


@app.get("/health")
def health() -> dict[str, int]:
    return {{"score": score("a good day")}}
"""


def _uv(cwd: Path, *args: str) -> None:
    env = {"PATH": BASE_PATH, "HOME": str(Path.home()), "UV_PYTHON_DOWNLOADS": "never"}
    env |= {k: os.environ[k] for k in ("SSL_CERT_FILE", "SSL_CERT_DIR") if k in os.environ}
    done = subprocess.run(
        [str(real_uv()), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def _uv_init_app(root: Path) -> Path:
    """What a new user has: `uv init --package`, an API importing a sibling, `uv add fastapi
    uvicorn`, committed on main in a repository with no remote."""
    repo = root / "sentiment-svc"
    _uv(root, "init", "--no-config", "--package", "--vcs", "none", "--author-from", "none",
        "--python", "3.11", str(repo))  # fmt: skip
    (repo / "src" / PKG / "scoring.py").write_text("def score(text):\n    return len(text)\n")
    (repo / "src" / PKG / "api.py").write_text(API)
    _uv(repo, "add", "fastapi", "uvicorn")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "A sentiment service")
    return repo


def test_a_uv_init_apps_workflow_is_green_on_its_first_pull_request(
    ai_deploy_wheel: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    repo = _uv_init_app(tmp_path)
    _git(repo, "checkout", "-q", "-b", "deploy-with-ai-deploy")
    init = init_and_commit(repo)
    assert f"the app: {PKG}.api:app (app_module)" in init.stdout
    assert "the workflow's Test step is skipped: the app has no tests" in init.stdout
    # No remote: the repository is a placeholder in the printed set-up, and init says so.
    assert "warning: OWNER/REPO is a placeholder" in init.stderr
    assert "--repository OWNER/REPO" in init.stderr
    sha = _git(repo, "rev-parse", "HEAD")
    _git(repo, "update-ref", "refs/pull/1/merge", sha)  # main fast-forwards to it

    runner = Runner(
        tmp_path / "runner",
        repo,
        Contexts(
            secrets={},
            vars={"AI_DEPLOY_SOURCE": str(ai_deploy_wheel)},
            sha=sha,
            ref="refs/pull/1/merge",
            token="",
        ),
        repository="someone/sentiment-svc",
        run_id="7000000001",
        api_url="http://127.0.0.1:9",  # nothing in the jobs that run asks GitHub's API
        runner_env=lambda job, permissions: {},
        actions={"astral-sh/setup-uv": setup_uv(tmp_path / "runner" / "uv-cache")},
    )
    try:
        jobs = runner.run(repo / ".github" / "workflows" / "ai-cicd.yml")
    finally:
        print(runner.log())
    outcome = {job_id: job.conclusion for job_id, job in jobs.items()}
    wanted = {"lint-test": "success", "build-and-artifact": "success", "deploy": "skipped"}
    assert outcome == wanted, _failed_steps(jobs)

    assert "All checks passed!" in _step(jobs, "lint-test", "Lint").log
    skipped = _step(jobs, "lint-test", "Test (skipped)").log
    assert "::notice title=Tests skipped::the app has no tests" in skipped
    assert not [s for s in jobs["lint-test"].steps if s.name == "Test"]

    # The artifact it built is one the deploy accepts for the app module init wrote.
    settings = parse_app_settings((repo / "ai-deploy.toml").read_text()).settings
    assert settings["app_module"] == f"{PKG}.api:app"
    (stored,) = runner.artifacts.iterdir()
    (tarball,) = stored.glob("*.tar.gz")
    assert (stored / f"{tarball.name}.sha256").is_file()
    checked = check_artifact(tarball, str(settings["app_module"]))
    assert checked.release_id == sha
