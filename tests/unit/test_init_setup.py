"""The one-time set-up `ai-deploy init` prints, run as a user pastes it: every gcloud and gh call
it makes is recorded by stand-ins on PATH, so what GCP and GitHub would be told is asserted
argument by argument. Values that would break the shell, the CEL condition, the workflow's YAML
or the TOML file are refused before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ai_deploy.commands.init import run_init
from ai_deploy.settings.appfile import parse_app_settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GIVEN = {
    "project": "dojangkok-ai",
    "zone": "asia-northeast3-a",
    "instance": "ai-server-prod",
    "repository": "dojangkok/ai-server",
}
# Stand-ins for gcloud and gh: each call appends its argv as one JSON line; gh answers the
# repository id question, gcloud the project number one.
STUB = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[1:3] == ["api", "repos/dojangkok/ai-server"]:
    print(987654)
if sys.argv[1:3] == ["projects", "describe"]:
    print(4242)
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "my-ai-server"
    shutil.copytree(REPO / "examples" / "ai-server", path)
    return path


def _init(app: Path, capsys: pytest.CaptureFixture[str], **given: str | None) -> tuple[int, str]:
    values = {
        "force": True,
        "environment": "production",
        "project": None,
        "zone": None,
        "instance": None,
        "repository": None,
        "service_account": "ai-deploy",
        "transport": "direct",
        **{k: v for k, v in given.items() if v is not None},
    }
    code = run_init(str(app), **values)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    return code, out if code == 0 else err


def _pasted(out: str, tmp_path: Path) -> list[list[str]]:
    """The shell commands of OUT (from `REPOSITORY_ID=` to the last gh line) run by bash with
    gcloud and gh stand-ins; their calls, in order."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("REPOSITORY_ID="))
    end = max(i for i, line in enumerate(lines) if line.startswith("gh "))
    script = "\n".join(line for line in lines[start : end + 1] if not line.startswith("3. "))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("gcloud", "gh"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)},
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in calls.read_text().splitlines()]


def _option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def _one(calls: list[list[str]], *words: str) -> list[str]:
    found = [c for c in calls if c[1 : 1 + len(words)] == list(words)]
    assert len(found) == 1, (words, calls)
    return found[0]


@pytest.mark.parametrize(("repository_id", "expected"), [("123456", "123456"), (None, "987654")])
def test_the_pasted_wif_setup_trusts_the_repository_id_environment_and_main_only(
    app: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    repository_id: str | None,
    expected: str,
) -> None:
    code, out = _init(app, capsys, repository_id=repository_id, **GIVEN)
    assert code == 0, out
    assert "assertion.repository ==" not in out and "attribute.repository/" not in out
    if repository_id is None:
        assert "gh api repos/dojangkok/ai-server --jq .id" in out  # how to get the number
    calls = _pasted(out, tmp_path)
    provider = _one(calls, "iam", "workload-identity-pools", "providers", "create-oidc")
    assert _option(provider, "--attribute-condition") == (
        f"assertion.repository_id == '{expected}' && assertion.environment == 'production' "
        "&& assertion.ref == 'refs/heads/main'"
    )
    mapping = _option(provider, "--attribute-mapping").split(",")
    assert "attribute.repository_id=assertion.repository_id" in mapping
    binding = _one(calls, "iam", "service-accounts", "add-iam-policy-binding")
    assert _option(binding, "--member") == (
        "principalSet://iam.googleapis.com/projects/4242/locations/global/"
        f"workloadIdentityPools/github/attribute.repository_id/{expected}"
    )
    assert _option(binding, "--role") == "roles/iam.workloadIdentityUser"
    # The environment deploys from main only, so a branch cannot borrow it either.
    env = _one(calls, "api", "-X", "PUT", "repos/dojangkok/ai-server/environments/production")
    assert "deployment_branch_policy[custom_branch_policies]=true" in env
    assert "deployment_branch_policy[protected_branches]=false" in env
    policy = _one(
        calls,
        "api",
        "-X",
        "POST",
        "repos/dojangkok/ai-server/environments/production/deployment-branch-policies",
    )
    assert policy[-4:] == ["-f", "name=main", "-f", "type=branch"]
    secret = _one(calls, "secret", "set", "GCP_INSTANCE")
    assert secret[-4:] == ["--env", "production", "--body", "ai-server-prod"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("repository", "x/y' || true || 'z"),
        ("repository", "owner/repo$(touch pwned)"),
        ("repository", "owner/.."),
        ("repository", "\U0001d44eowner/repo"),
        ("project", "$(touch pwned)"),
        ("project", "my project"),
        ("zone", "us-central1-a;id"),
        ("instance", "vm`id`"),
        ("instance", "Upper-Case"),
        ("repository_id", "123 || true"),
        ("repository_id", "0"),
        ("environment", "null"),
        ("environment", "NULL"),
        ("environment", "~"),
        ("environment", "yes"),
        ("environment", "prod'uction"),
        ("environment", "prod.eu"),
        ("environment", "\U0001f680"),
        ("service_account", "x$(id)"),
    ],
)
def test_a_value_that_breaks_where_it_goes_is_refused_and_nothing_is_written(
    app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    code, err = _init(app, capsys, **{option: value})
    assert code == 2
    assert repr(value) in err and " is not " in err  # the value and its rule
    assert not (app / "ai-deploy.toml").exists()
    assert not (app / ".github").exists()
    assert not (tmp_path / "pwned").exists()


def test_a_bad_repository_from_the_origin_remote_is_refused_naming_the_remote(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["git", "init", "-q", str(app)], check=True)
    subprocess.run(
        ["git", "-C", str(app), "remote", "add", "origin", "https://github.com/\u00fcber/app.git"],
        check=True,
    )
    code, err = _init(app, capsys)
    assert code == 2
    assert "the origin remote's repository '\u00fcber/app'" in err


def test_an_app_module_outside_the_bmp_is_written_as_toml_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app"
    (app / "\U0001d44epp").mkdir(parents=True)
    (app / "pyproject.toml").write_text('[project]\nname = "demo-app"\n')
    (app / "\U0001d44epp" / "server.py").write_text(
        "from fastapi import FastAPI\napp = FastAPI()\n"
    )
    code, out = _init(app, capsys)
    assert code == 0, out
    parsed = parse_app_settings((app / "ai-deploy.toml").read_text(encoding="utf-8"))
    assert parsed.settings["app_module"] == "\U0001d44epp.server:app"


def test_the_cli_takes_the_repository_id(app: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ai_deploy.cli", "init", "--repository-id", "31337", "--force"],
        cwd=app,
        env={"PATH": "/usr/bin:/bin", "HOME": str(app)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "REPOSITORY_ID=31337" in proc.stdout
