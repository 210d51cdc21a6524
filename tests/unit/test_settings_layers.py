"""Each host's settings assembled at one point (ai_deploy.settings.layers), as data: the
precedence of group_data, ai-deploy.toml, its environment, the SSH variables and --data; the
names derived from app_name; paths relative to the toml or to the working directory; an SSH
key given as text or as a path; and what `ai-deploy config` says of each."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Inventory
from test_config_command import _config, _lines  # ai-deploy config as users run it

from ai_deploy.inventory import pyinfra_command
from ai_deploy.settings.check import SettingsError
from ai_deploy.settings.derive import derived_values
from ai_deploy.settings.layers import apply_settings, run_layers, source_in
from ai_deploy.settings.localpaths import resolve_data_items
from ai_deploy.settings.ssh import is_key_text

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
AI_DEPLOY = str(ROOT / ".venv" / "bin" / "ai-deploy")
KEY_TEXT = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-not-a-real-key\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
APP_TOML = """\
app_name = "sentiment"
app_port = 9000
env_file = ".env"

[environments.production]
hosts = ["203.0.113.10"]
ssh_user = "deploy"
ssh_key = "keys/id_deploy"
health_deadline_s = 900

[environments.staging]
hosts = ["203.0.113.20"]
app_port = 9100
app_root = "/srv/sentiment"
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An app's directory: ai-deploy.toml, .env and the key it names (relative paths)."""
    app = tmp_path / "app"
    (app / "keys").mkdir(parents=True)
    (app / "ai-deploy.toml").write_text(APP_TOML)
    (app / ".env").write_text("MODEL_LOAD_SECONDS=1\n")
    (app / "keys" / "id_deploy").write_text(KEY_TEXT)
    return app


def _host(
    app_dir: Path,
    environ: dict[str, str] | None = None,
    override: dict[str, Any] | None = None,
    host_data: dict[str, Any] | None = None,
    environment: str = "",
) -> Any:
    """A host of a hand-written inventory (no group data of its own) with its layers."""
    env = {"XDG_CONFIG_HOME": str(app_dir.parent / "config"), **(environ or {})}
    inventory = Inventory(([("h1", host_data or {})], {}), override_data=override or {})
    apply_settings(inventory, run_layers(env, app_dir, environment))
    return inventory.get_host("h1")


# --- derived from app_name ------------------------------------------------------------------


def test_every_name_is_derived_from_app_name_unless_set() -> None:
    assert derived_values({"app_name": "sentiment"}) == {
        "app_root": "/app/sentiment",
        "app_user": "sentiment",
        "app_group": "sentiment",
        "build_user": "sentiment-build",
        "app_log_dir": "/var/log/sentiment",
        "bluegreen_upstream": "/etc/nginx/sentiment-upstream.conf",
    }
    explicit = {"app_name": "sentiment", "app_root": "/srv/x", "app_user": "ubuntu"}
    derived = derived_values({**explicit, "app_log_dir": None})
    assert "app_root" not in derived and "app_user" not in derived
    assert derived["app_log_dir"] == "/var/log/sentiment"
    assert derived_values({"app_name": ""}) == {} and derived_values({}) == {}


def test_data_app_name_derives_and_an_explicit_value_wins(app_dir: Path) -> None:
    host = _host(app_dir, override={"app_name": "other"})
    assert host.data.app_root == "/app/other" and host.data.app_user == "other"
    assert source_in(host.data, "app_root") == "derived from app_name"
    staging = _host(app_dir, environment="staging", override={"app_name": "other"})
    assert staging.data.app_root == "/srv/sentiment"  # set in the environment: it wins
    assert staging.data.app_log_dir == "/var/log/other"


# --- precedence -----------------------------------------------------------------------------


def test_precedence_lowest_first_all_py_toml_environment_variables_data(app_dir: Path) -> None:
    host = _host(app_dir, host_data={"app_port": 7000, "ssh_user": "inventory-user"})
    data = host.data
    assert data.releases_keep == 5 and source_in(data, "releases_keep").startswith("default")
    assert data.app_port == 9000 and source_in(data, "app_port") == "ai-deploy.toml"
    assert data.health_deadline_s == 900
    assert source_in(data, "health_deadline_s") == "ai-deploy.toml [environments.production]"
    assert data.ssh_user == "deploy"  # the environment's, over the inventory's own
    assert data.app_root == "/app/sentiment" and data._sudo is True
    with_env = _host(app_dir, environ={"AI_DEPLOY_SSH_USER": "ci"}, override={"app_port": 1})
    assert with_env.data.ssh_user == "ci"
    assert source_in(with_env.data, "ssh_user") == "AI_DEPLOY_SSH_USER"
    assert with_env.data.app_port == 1 and source_in(with_env.data, "app_port") == "--data"


def test_group_data_of_a_group_named_like_the_projects_applies(app_dir: Path) -> None:
    inventory = Inventory((["h1"], {}), prod=(["h1"], {}))
    config = {"XDG_CONFIG_HOME": str(app_dir.parent / "config")}
    apply_settings(inventory, run_layers(config, app_dir.parent))  # no ai-deploy.toml there
    data = inventory.get_host("h1").data
    assert data.health_deadline_s == 600
    assert source_in(data, "health_deadline_s") == "group_data/prod.py"


# --- paths ----------------------------------------------------------------------------------


def test_paths_in_the_toml_are_relative_to_it_wherever_the_command_runs(
    app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    host = _host(app_dir, environ={"AI_DEPLOY_SETTINGS": str(app_dir / "ai-deploy.toml")})
    assert host.data.env_file == str(app_dir / ".env")
    assert host.data.ssh_key == str(app_dir / "keys" / "id_deploy")


def test_paths_on_the_command_line_are_relative_to_the_working_directory(
    app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "prod.env").write_text("A=1\n")
    monkeypatch.chdir(work)
    items = ["env_file=prod.env", "app_port=1", "artifact=dist/a.tar.gz", "env_file=/abs"]
    assert resolve_data_items(items, work) == [
        f"env_file={work / 'prod.env'}",
        "app_port=1",
        f"artifact={work / 'dist/a.tar.gz'}",
        "env_file=/abs",
    ]
    # What the CI entry hands pyinfra (which runs in the project's directory).
    cmd = pyinfra_command("inv.py", ["env_file=prod.env"])
    assert cmd[cmd.index("--data") + 1] == f"env_file={work / 'prod.env'}"
    host = _host(app_dir, override={"env_file": "prod.env"})
    assert host.data.env_file == str(work / "prod.env")


def test_a_missing_file_names_the_setting_its_source_and_the_resolved_path(
    app_dir: Path,
) -> None:
    (app_dir / ".env").unlink()
    with pytest.raises(SettingsError) as exc:
        _host(app_dir)
    assert exc.value.problems == [
        f"h1: env_file = {app_dir / '.env'} (from ai-deploy.toml): no such file; paths in "
        "ai-deploy.toml are relative to its directory, those on the command line to the "
        "working directory"
    ]
    (app_dir / ".env").write_text("")
    with pytest.raises(SettingsError, match=r"ssh_key = /nowhere/id \(from AI_DEPLOY_SSH_PRI"):
        _host(app_dir, environ={"AI_DEPLOY_SSH_PRIVATE_KEY": "/nowhere/id"})


# --- the SSH key: text or path --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (KEY_TEXT, True),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", True),
        ("-----BEGIN PRIVATE KEY-----\nMIIE", True),
        ("/home/me/.ssh/id_ed25519", False),
        ("keys/PRIVATE KEY-----", False),  # a file name that merely looks like one
        ("~/.ssh/id_rsa", False),
        ("ssh-ed25519 AAAAC3 public key", False),
    ],
)
def test_key_text_is_told_from_a_path_by_its_header(value: str, text: bool) -> None:
    assert is_key_text(value) is text


def test_key_text_is_written_private_and_a_path_is_taken_from_the_working_directory(
    app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host(app_dir, environ={"AI_DEPLOY_SSH_PRIVATE_KEY": KEY_TEXT})
    written = Path(host.data.ssh_key)
    assert written.read_text() == KEY_TEXT
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    assert host.data.ssh_allow_agent is False and host.data.ssh_look_for_keys is False
    assert source_in(host.data, "ssh_key") == "AI_DEPLOY_SSH_PRIVATE_KEY"
    os.chdir(app_dir)
    try:
        by_path = _host(app_dir, environ={"AI_DEPLOY_SSH_PRIVATE_KEY": "keys/id_deploy"})
    finally:
        os.chdir(ROOT)
    assert by_path.data.ssh_key == str(app_dir / "keys" / "id_deploy")
    assert KEY_TEXT.splitlines()[1] not in capsys.readouterr().err


def test_the_old_key_variable_still_works_and_is_said_to_be_old(
    app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(app_dir / "keys" / "id_deploy")
    host = _host(app_dir, environ={"AI_DEPLOY_SSH_KEY": key})
    assert host.data.ssh_key == key
    assert source_in(host.data, "ssh_key") == "AI_DEPLOY_SSH_KEY"
    assert "AI_DEPLOY_SSH_KEY is the old name of AI_DEPLOY_SSH_PRIVATE_KEY" in (
        capsys.readouterr().err
    )
    both = {"AI_DEPLOY_SSH_KEY": "/old", "AI_DEPLOY_SSH_PRIVATE_KEY": key}
    assert _host(app_dir, environ=both).data.ssh_key == key  # the current name wins


def test_host_keys_learnt_go_to_ai_deploys_own_known_hosts(app_dir: Path) -> None:
    host = _host(app_dir)
    known = app_dir.parent / "config" / "ai-deploy" / "known_hosts"
    assert host.data.ssh_known_hosts_file == str(known) and known.is_file()
    own = _host(app_dir, host_data={"ssh_known_hosts_file": "/etc/ssh/ssh_known_hosts"})
    assert own.data.ssh_known_hosts_file == "/etc/ssh/ssh_known_hosts"


# --- ai-deploy config -----------------------------------------------------------------------


def test_config_names_derived_values_ssh_settings_and_their_sources(app_dir: Path) -> None:
    proc = _config(app_dir)
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stdout)
    assert lines["app_log_dir"] == "'/var/log/sentiment'  # derived from app_name"
    assert lines["build_user"] == "'sentiment-build'  # derived from app_name"
    assert lines["app_data_dirs"] == "[]  # default (group_data/all.py)"
    production = "ai-deploy.toml [environments.production]"
    assert lines["hosts"] == f"['203.0.113.10']  # {production}"
    assert lines["ssh_user"] == f"'deploy'  # {production}"
    assert lines["ssh_key"] == f"'{app_dir / 'keys' / 'id_deploy'}'  # {production}"
    assert lines["env_file"] == f"'{app_dir / '.env'}'  # ai-deploy.toml"
    overridden = _lines(
        _config(app_dir, AI_DEPLOY_SSH_USER="ci", AI_DEPLOY_SSH_PRIVATE_KEY=KEY_TEXT).stdout
    )
    assert overridden["ssh_user"] == "'ci'  # AI_DEPLOY_SSH_USER"
    assert overridden["ssh_key"] == '"<the key\'s text, not shown>"  # AI_DEPLOY_SSH_PRIVATE_KEY'
    assert overridden["AI_DEPLOY_SSH_PRIVATE_KEY"].startswith("'********'")
    assert "b3BlbnNzaC1rZXk" not in _config(app_dir, AI_DEPLOY_SSH_PRIVATE_KEY=KEY_TEXT).stdout


def test_an_ssh_failure_names_the_user_the_key_and_where_each_was_set(app_dir: Path) -> None:
    """`status -i` with a hand-written inventory (a closed loopback port: nothing answers)."""
    (app_dir / "inv.py").write_text('hosts = [("127.0.0.1", {"ssh_port": 1})]\n')
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AI_DEPLOY_")}
    proc = subprocess.run(
        [AI_DEPLOY, "status", "-i", "inv.py"],
        cwd=app_dir,
        env={**environ, "XDG_CONFIG_HOME": str(app_dir.parent / "config")},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    production = "ai-deploy.toml [environments.production]"
    assert f"SSH as deploy (ssh_user from {production})" in proc.stdout
    assert f"with key {app_dir / 'keys' / 'id_deploy'} (ssh_key from {production})" in proc.stdout
    assert "set ssh_user and ssh_key in ai-deploy.toml" in proc.stdout
    assert str(app_dir.parent / "config" / "ai-deploy" / "known_hosts") in proc.stderr


def test_config_stops_on_a_missing_file_naming_it(app_dir: Path) -> None:
    (app_dir / "keys" / "id_deploy").unlink()
    proc = _config(app_dir)
    assert proc.returncode == 2
    assert (
        f"ssh_key = {app_dir / 'keys' / 'id_deploy'} (from ai-deploy.toml "
        "[environments.production]): no such file"
    ) in proc.stderr


def test_a_host_outside_gcp_gets_the_variables_key_else_the_environments(
    app_dir: Path, tmp_path: Path
) -> None:
    """`deploy --no-gcp --host`: the run's own SSH check uses the same key the settings name."""
    from ai_deploy.ci.connect.ssh import provided_identity
    from ai_deploy.ci.options import PhaseFailed

    toml_key = str(app_dir / "keys" / "id_deploy")
    production = "ai-deploy.toml [environments.production]"
    sources = {"ssh_user": production, "ssh_key": production}
    run = tmp_path / "run"
    run.mkdir()
    from_toml = provided_identity({}, run, "deploy", toml_key, sources, "ai-deploy")
    assert (from_toml.user, str(from_toml.key)) == ("deploy", toml_key)
    assert from_toml.described == (
        f"user deploy ({production}), key {toml_key} (ssh_key from {production})"
    )
    text = {"AI_DEPLOY_SSH_PRIVATE_KEY": KEY_TEXT, "AI_DEPLOY_SSH_USER": "ci"}
    from_text = provided_identity(text, run, "deploy", toml_key, sources, "ai-deploy")
    assert from_text.user == "ci" and from_text.key.read_text() == KEY_TEXT
    assert stat.S_IMODE(from_text.key.stat().st_mode) == 0o600
    assert from_text.described == (
        "user ci (AI_DEPLOY_SSH_USER), the key text in AI_DEPLOY_SSH_PRIVATE_KEY"
    )
    assert provided_identity({}, run, None, toml_key, {}, "ai-deploy").user_source == "default"
    with pytest.raises(PhaseFailed, match=r"no SSH key .* set ssh_key in ai-deploy.toml") as exc:
        provided_identity({}, run, "deploy", None, {}, "ai-deploy")
    assert exc.value.phase == "config"
