"""The exit-code table of `ai-deploy deploy`: the rows a run can reach with no host (bad input,
authentication), the settings it reads from group_data, and the table in --help. The rows that
need a host are produced by tests/e2e/test_installed_tool.py and tests/gcp/test_gcp_deploy_flow.py
(see the README's table)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ai_deploy.artifact.build import build_artifact
from ai_deploy.ci.flow import run_deploy
from ai_deploy.ci.options import DeployOptions
from ai_deploy.ci.settings_probe import read_settings
from ai_deploy.cli import build_parser
from ai_deploy.project import group_data_defaults
from ai_deploy.rollout import exitcodes

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ai-server"


def _deploy(artifact: Path, *, env: dict[str, str] | None = None, **kw: object) -> int:
    opts = DeployOptions(artifact=artifact, **kw)  # type: ignore[arg-type]
    return run_deploy(opts, env={"PATH": "/usr/bin:/bin", **(env or {})})


def _factory_artifact(tmp_path: Path, entry: str) -> Path:
    """An app whose entry module is ENTRY (a path inside the archive), not main.py."""
    path = tmp_path / "factory.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("pyproject.toml", "uv.lock", entry):
            data = b"# test\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_corrupt_artifact_exits_2_before_anything_else(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "ai-server-bad.tar.gz"
    bad.write_bytes(b"not gzip at all")
    code = _deploy(bad, use_gcp=False, host="127.0.0.1")
    assert code == exitcodes.EXIT_CONFIG == 2
    assert "gzip" in capsys.readouterr().err


def test_a_bad_data_item_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    art = build_artifact(EXAMPLE, tmp_path / "dist")
    code = _deploy(art, use_gcp=False, host="127.0.0.1", data=["no-equals-sign"])
    assert code == 2
    assert "--data no-equals-sign: expected KEY=VALUE" in capsys.readouterr().err


def test_an_unusable_login_name_exits_2_naming_the_setting(tmp_path: Path, capsys) -> None:
    art = build_artifact(EXAMPLE, tmp_path / "dist")
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n"
    env = {"AI_DEPLOY_SSH_USER": "root", "AI_DEPLOY_SSH_PRIVATE_KEY": key}
    code = _deploy(art, use_gcp=False, host="127.0.0.1", env=env)
    assert code == 2
    err = capsys.readouterr().err
    assert "AI_DEPLOY_SSH_USER='root' is not a usable login name" in err
    assert "unexpected error" not in err


def test_a_key_path_that_is_not_there_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    art = build_artifact(EXAMPLE, tmp_path / "dist")
    missing = tmp_path / "keys" / "id_ed25519"
    code = _deploy(
        art,
        use_gcp=False,
        host="127.0.0.1",
        env={"AI_DEPLOY_SSH_PRIVATE_KEY": str(missing)},
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"ssh_key = {missing} (from AI_DEPLOY_SSH_PRIVATE_KEY): no such file" in err


def test_the_artifact_limits_come_from_group_data_and_data(tmp_path: Path, capsys) -> None:
    art = build_artifact(EXAMPLE, tmp_path / "dist")
    code = _deploy(art, use_gcp=False, host="127.0.0.1", data=["artifact_max_bytes=1000"])
    assert code == 2
    err = capsys.readouterr().err
    assert "artifact_max_bytes" in err


def test_missing_credentials_exit_10(tmp_path: Path, capsys) -> None:
    art = build_artifact(EXAMPLE, tmp_path / "dist")
    code = _deploy(
        art,
        env={
            "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "gone.json"),
            "GCP_PROJECT_ID": "my-project-123",
        },
    )
    assert code == exitcodes.EXIT_AUTH == 10
    assert "gone.json" in capsys.readouterr().err


def test_settings_come_from_group_data_and_data_overrides(tmp_path: Path) -> None:
    defaults = group_data_defaults()
    inventory = str(REPO / "inventories" / "prod.py")
    settings = read_settings(inventory, [], {"PATH": "/usr/bin:/bin"}, "192.0.2.1")
    assert settings.app_module == defaults["app_module"]
    assert settings.app_port == defaults["app_port"]
    assert settings.health_path == defaults["health_path"]
    assert settings.deploy_strategy == defaults["deploy_strategy"]
    changed = read_settings(
        inventory,
        ["app_port=9100", "app_module=pkg.app:create", "deploy_strategy=bluegreen"],
        {"PATH": "/usr/bin:/bin"},
        "192.0.2.1",
    )
    assert (changed.app_port, changed.app_module, changed.deploy_strategy) == (
        9100,
        "pkg.app:create",
        "bluegreen",
    )


def test_the_artifact_is_checked_against_the_configured_app_module(tmp_path: Path, capsys) -> None:
    """An app served as `pkg.app:create` has no main.py: accepted with app_module set, refused
    without; in both cases before any SSH (the run stops at the missing key, exit 2)."""
    art = _factory_artifact(tmp_path, "pkg/app.py")
    code = _deploy(art, use_gcp=False, host="127.0.0.1")
    assert code == 2
    assert "main.py" in capsys.readouterr().err
    code = _deploy(art, use_gcp=False, host="127.0.0.1", data=["app_module=pkg.app:create"])
    assert code == 2
    err = capsys.readouterr().err
    assert "main.py" not in err and "AI_DEPLOY_SSH_PRIVATE_KEY" in err


def test_help_shows_every_exit_code() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["deploy"].format_help()  # type: ignore[union-attr]
    for code in ("0", "2", "10", "11", "12", "13", "14", "15", "16", "128+N"):
        assert f"\n {code:>3}  " in text or f"\n{code:>4}  " in text or f" {code}  " in text, code
