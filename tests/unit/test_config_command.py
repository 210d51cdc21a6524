"""`ai-deploy config`: every setting with its merged value and source, run as users run it (the
installed command, in a directory holding the app's ai-deploy.toml)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ai_deploy.commands.config import MASK, shown

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
AI_DEPLOY = str(ROOT / ".venv" / "bin" / "ai-deploy")
APP_TOML = """\
deploy_strategy = "bluegreen"
app_port = 9000
env_default = "OPENAI_API_KEY=sk-not-to-be-printed\\n"

[environments.production]
hosts = ["203.0.113.10"]
health_deadline_s = 900
uv_env = { UV_INDEX_URL = "https://user:hunter2@pypi.example.invalid/simple", HF_TOKEN = "hf_x" }
"""


def _config(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AI_DEPLOY_")}
    return subprocess.run(
        [AI_DEPLOY, "config", *args],
        cwd=cwd,
        env={**environ, **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _lines(out: str) -> dict[str, str]:
    return {
        line.split(" = ", 1)[0].strip(): line.split(" = ", 1)[1]
        for line in out.splitlines()
        if " = " in line
    }


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "ai-deploy.toml").write_text(APP_TOML)
    return tmp_path


def test_config_prints_every_setting_with_value_and_source(app_dir: Path) -> None:
    proc = _config(app_dir, "-e", "production", "--data", "app_port=9100")
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stdout)
    assert lines["app_root"] == "'/app/ai-server'  # derived from app_name"
    assert lines["deploy_strategy"] == "'bluegreen'  # ai-deploy.toml"
    assert lines["health_deadline_s"] == "900  # ai-deploy.toml [environments.production]"
    assert lines["app_port"] == "9100  # --data"
    assert "uv_version" in lines and "artifact" in lines


def test_config_without_environment_uses_production_when_the_file_has_it(app_dir: Path) -> None:
    lines = _lines(_config(app_dir).stdout)
    assert lines["health_deadline_s"] == "900  # ai-deploy.toml [environments.production]"
    assert lines["app_port"] == "9000  # ai-deploy.toml"
    # Without that table, group_data/prod.py's value shows.
    text = (app_dir / "ai-deploy.toml").read_text()
    (app_dir / "ai-deploy.toml").write_text(
        text.replace("[environments.production]", "[environments.prod2]")
    )
    lines = _lines(_config(app_dir).stdout)
    assert lines["health_deadline_s"] == "600  # group_data/prod.py"


def test_config_never_prints_secrets_or_env_text(app_dir: Path) -> None:
    proc = _config(app_dir, "-e", "production", "--data", "ssh_key_password=pw123")
    assert proc.returncode == 0, proc.stderr
    for secret in ("sk-not-to-be-printed", "hunter2", "hf_x", "pw123"):
        assert secret not in proc.stdout
    lines = _lines(proc.stdout)
    assert "characters of .env text, not shown" in lines["env_default"]
    assert f"'HF_TOKEN': '{MASK}'" in lines["uv_env"]
    assert f"https://{MASK}@pypi.example.invalid/simple" in lines["uv_env"]


def test_config_json(app_dir: Path) -> None:
    proc = _config(app_dir, "--json", "-e", "production")
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["health_deadline_s"] == {
        "name": "health_deadline_s",
        "value": 900,
        "source": "ai-deploy.toml [environments.production]",
    }
    assert rows["bluegreen_ports"]["value"] == [8001, 8002]


def test_config_reads_the_file_named_by_ai_deploy_settings(tmp_path: Path) -> None:
    named = tmp_path / "elsewhere.toml"
    named.write_text("releases_keep = 2\n")
    lines = _lines(_config(tmp_path, AI_DEPLOY_SETTINGS=str(named)).stdout)
    assert lines["releases_keep"] == "2  # elsewhere.toml"


def test_config_errors_name_each_problem_and_exit_2(app_dir: Path) -> None:
    (app_dir / "ai-deploy.toml").write_text(
        'app_prot = 1\n[environments.production]\nhosts = ["a"]\n'
    )
    proc = _config(app_dir, "--data", "foo", "--data", "app_port=eighty")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "ai-deploy: error: ai-deploy.toml: unknown setting 'app_prot' (did you mean 'app_port'?)",
        "ai-deploy: error: --data foo: expected KEY=VALUE",
        "ai-deploy: error: --data: app_port: expected an integer, got 'eighty'",
    ]
    assert not (app_dir / "pyinfra-debug.log").exists()


def test_config_unknown_environment(app_dir: Path) -> None:
    proc = _config(app_dir, "-e", "staging")
    assert proc.returncode == 2
    assert "no [environments.staging]" in proc.stderr and "production" in proc.stderr


def test_help_lists_config() -> None:
    proc = subprocess.run([AI_DEPLOY, "--help"], capture_output=True, text=True, check=True)
    assert "config" in proc.stdout
    sub = subprocess.run([AI_DEPLOY, "config", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0 and "--environment" in sub.stdout and "--json" in sub.stdout


def test_shown_masks_by_name() -> None:
    assert shown("ssh_password", "x") == MASK
    assert shown("ssh_key_password", None) is None
    assert shown("app_port", 8000) == 8000


def test_config_shows_the_deploys_environment_variables_with_secrets_masked(
    app_dir: Path,
) -> None:
    hook = "https://hooks.slack.invalid/services/T000/B000/not-to-be-printed"
    proc = _config(
        app_dir, AI_DEPLOY_SSH_TRANSPORT="iap", AI_DEPLOY_SLACK_WEBHOOK_URL=hook, GCP_ZONE="z-a"
    )
    assert proc.returncode == 0, proc.stderr
    assert "not-to-be-printed" not in proc.stdout
    lines = _lines(proc.stdout.split("# the deploy's environment variables", 1)[1])
    assert lines["AI_DEPLOY_SSH_TRANSPORT"] == "'iap'  # environment variable"
    assert lines["GCP_ZONE"] == "'z-a'  # environment variable"
    assert lines["AI_DEPLOY_SLACK_WEBHOOK_URL"] == f"'{MASK}'  # environment variable"
    assert lines["AI_DEPLOY_HOST_KEYS"].startswith("'accept-new'  # default")
    rows = {r["name"]: r for r in json.loads(_config(app_dir, "--json", GCP_ZONE="z-a").stdout)}
    assert rows["GCP_ZONE"] == {
        "name": "GCP_ZONE",
        "value": "z-a",
        "source": "environment variable",
    }
