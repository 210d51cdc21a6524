"""`ai-deploy init` in a copy of the example app, through the real CLI: what it writes (every
setting commented with its default, the environments, the workflow), what it refuses, what it
prints, and that the written files are checked like any others."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ai_deploy.appinit.lint_test import LintTest
from ai_deploy.appinit.workflow import render_workflow
from ai_deploy.gcp.iap import IAP_ROLE, create_rule_command
from ai_deploy.gcp.permissions import IAP_ROLE_ID, WINDOW_ROLE_ID
from ai_deploy.settings.appfile import parse_app_settings
from ai_deploy.settings.schema import load_schema
from tests.unit.test_workflow import run_actionlint, run_zizmor

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
NAMES = (
    "--project", "dojangkok-ai", "--zone", "asia-northeast3-a", "--instance", "ai-server-prod",
    "--repository", "dojangkok/ai-server",
)  # fmt: skip


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "ai_deploy.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "my-ai-server"
    shutil.copytree(REPO / "examples" / "ai-server", path)
    return path


def test_init_writes_the_settings_and_the_workflow_and_prints_the_setup(app: Path) -> None:
    proc = _cli(app, "init", *NAMES)
    assert proc.returncode == 0, proc.stderr
    settings = (app / "ai-deploy.toml").read_text()
    parsed = parse_app_settings(settings)  # checked as any settings file is
    assert parsed.settings == {}  # every setting is commented out: the defaults hold
    assert sorted(parsed.environments) == ["production", "staging"]
    for name, spec in load_schema().items():
        if name in ("artifact", "rollback", "restart"):
            assert f"# {name} " not in settings  # set per run, not kept
        elif spec.default is not None:
            assert f"\n# {name} = " in settings, name
    assert '# deploy_strategy = "socket"' in settings
    workflow = (app / ".github" / "workflows" / "ai-cicd.yml").read_text()
    assert workflow == render_workflow("ai-server", "production", "3.10", LintTest.of(app))
    out = proc.stdout
    assert "wrote ai-deploy.toml, .github/workflows/ai-cicd.yml" in out
    assert "gcloud iam workload-identity-pools create github --project dojangkok-ai" in out
    assert "assertion.repository_id == '$REPOSITORY_ID'" in out  # see test_init_setup.py
    assert f"gcloud iam roles create {WINDOW_ROLE_ID} --project dojangkok-ai" in out
    assert "- compute.firewalls.create" in out
    assert "gcloud compute instances add-tags ai-server-prod" in out
    assert "gh secret set GCP_INSTANCE --env production --body ai-server-prod" in out
    assert "firewall-rules create" not in out  # the window mode needs no standing rule


def test_the_written_workflow_is_clean_for_actionlint_and_zizmor(app: Path) -> None:
    assert _cli(app, "init", "-e", "staging").returncode == 0
    workflow = app / ".github" / "workflows" / "ai-cicd.yml"
    assert "environment: staging" in workflow.read_text()
    assert run_actionlint(workflow) == []
    assert run_zizmor(workflow) == []


def test_init_refuses_to_overwrite_without_force(app: Path) -> None:
    assert _cli(app, "init").returncode == 0
    (app / "ai-deploy.toml").write_text("# ours\n")
    proc = _cli(app, "init")
    assert proc.returncode == 2
    assert "not overwriting ai-deploy.toml, .github/workflows/ai-cicd.yml" in proc.stderr
    assert "--force" in proc.stderr
    assert (app / "ai-deploy.toml").read_text() == "# ours\n"
    assert _cli(app, "init", "--force").returncode == 0
    assert (app / "ai-deploy.toml").read_text() != "# ours\n"


def test_init_outside_an_app_says_where_to_run_it(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "init")
    assert proc.returncode == 2
    assert "has no pyproject.toml" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_iap_transport_prints_the_standing_rule_and_its_role(app: Path) -> None:
    proc = _cli(app, "init", "--transport", "iap", *NAMES)
    assert proc.returncode == 0, proc.stderr
    assert create_rule_command("dojangkok-ai", "default", "ai-server") in proc.stdout
    assert f"gcloud iam roles create {IAP_ROLE_ID}" in proc.stdout
    assert IAP_ROLE in proc.stdout


def test_a_typo_in_the_written_settings_stops_with_the_key_and_a_suggestion(app: Path) -> None:
    assert _cli(app, "init").returncode == 0
    path = app / "ai-deploy.toml"
    path.write_text(
        path.read_text().replace('# deploy_strategy = "socket"', 'deploy_stratgy = "bluegreen"')
    )
    proc = _cli(app, "config")
    assert proc.returncode == 2
    assert "ai-deploy.toml: unknown setting 'deploy_stratgy' (did you mean 'deploy_strategy'?)" in (
        proc.stderr + proc.stdout
    )
    path.write_text(path.read_text().replace("deploy_stratgy", "deploy_strategy"))
    proc = _cli(app, "config", "-e", "staging")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"(?m)^deploy_strategy +(=|:)? *'bluegreen'.*# ai-deploy\.toml$", proc.stdout)


def test_a_new_teams_layout_is_found_and_used_by_the_build(tmp_path: Path) -> None:
    """Their own repository: the app in app/server.py as `api`, another project name, no
    uv.lock yet. init names the app module in the settings and says to lock; the artifact
    build then takes app_module from ai-deploy.toml."""
    repo = tmp_path / "llm-gateway"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "__init__.py").write_text("")
    (repo / "app" / "server.py").write_text("from fastapi import FastAPI\n\napi = FastAPI()\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("from fastapi import FastAPI\nfake = FastAPI()\n")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "llm-gateway"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        "dependencies = []\n"
    )
    proc = _cli(repo, "init")
    assert proc.returncode == 0, proc.stderr
    assert "the app: app.server:api (app_module)" in proc.stdout
    assert "no uv.lock yet" in proc.stdout
    settings = parse_app_settings((repo / "ai-deploy.toml").read_text()).settings
    assert settings == {"app_name": "llm-gateway", "app_module": "app.server:api"}
    workflow = (repo / ".github" / "workflows" / "ai-cicd.yml").read_text()
    assert (
        'python-version: "3.11"' in workflow and "name: llm-gateway-${{ github.sha }}" in workflow
    )
    (repo / "uv.lock").write_text("version = 1\n")
    built = subprocess.run(
        [sys.executable, "-m", "ai_deploy.cli", "artifact", "build", ".", "-o", "dist"],
        cwd=repo,
        env={"PATH": "/usr/bin:/bin", "HOME": str(repo), "AI_DEPLOY_NO_LOCK_CHECK": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr  # app/server.py satisfies app.server:api
    (repo / "ai-deploy.toml").write_text('app_module = "nowhere:app"\n')
    refused = subprocess.run(
        [sys.executable, "-m", "ai_deploy.cli", "artifact", "build", ".", "-o", "dist2"],
        cwd=repo,
        env={"PATH": "/usr/bin:/bin", "HOME": str(repo), "AI_DEPLOY_NO_LOCK_CHECK": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0 and "no nowhere.py or src/nowhere.py" in refused.stderr


def test_init_without_a_fastapi_app_says_what_it_looked_for(app: Path) -> None:
    (app / "main.py").write_text("print('no app here')\n")
    proc = _cli(app, "init")
    assert proc.returncode == 2
    assert "no FastAPI app found" in proc.stderr
    assert not (app / "ai-deploy.toml").exists()
