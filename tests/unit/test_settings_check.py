"""Settings are checked before any host is touched: the schema read from group_data/all.py,
unknown names (with the nearest known one) and ill-typed values in group_data files, --data and
ai-deploy.toml, and the hooks in `ai-deploy deploy`, the prod inventory and deploy.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ai_deploy.ci.options import PhaseFailed
from ai_deploy.ci.settings_probe import check_settings
from ai_deploy.host.strategies import STRATEGIES
from ai_deploy.project import group_data_defaults
from ai_deploy.settings.appfile import PATH_ENV, load_app_settings, parse_app_settings
from ai_deploy.settings.check import (
    SettingsError,
    check_data,
    check_group_dir,
    is_pyinfra_key,
    parse_data,
)
from ai_deploy.settings.derive import DERIVED, derived_values
from ai_deploy.settings.merge import merged_settings
from ai_deploy.settings.pyinfra_hooks import check_host
from ai_deploy.settings.schema import CHOICES, load_schema, parse_schema
from ai_deploy.settings.values import parse_cli_value

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"


# --- the schema -----------------------------------------------------------------------------


def test_schema_has_every_setting_of_all_py_with_its_default() -> None:
    schema = load_schema()
    defaults = group_data_defaults()
    assert set(schema) == set(defaults)
    declared = {name: spec.default for name, spec in schema.items()}
    assert all(declared[name] is None for name in DERIVED)  # left to app_name
    assert {**declared, **derived_values(declared)} == defaults
    assert schema["artifact_max_bytes"].default == 4 * 1024**3  # arithmetic, not executed


def test_schema_kinds_and_comments_come_from_all_py() -> None:
    schema = load_schema()
    assert schema["app_port"].kind == "int"
    assert schema["env_allow_empty"].kind == "bool"
    assert (schema["env_file"].kind, schema["env_file"].optional) == ("str", True)
    assert (schema["bluegreen_ports"].kind, schema["bluegreen_ports"].length) == ("tuple", 2)
    assert schema["uv_env"].kind == "dict"
    assert schema["health_deadline_s"].kind == "number"  # read with float()
    assert "systemd unit" in schema["app_name"].comment  # trailing comment
    assert "uv sync" in schema["build_user"].comment  # the block above
    assert "was left by a deploy that died" in schema["lock_lease_s"].comment  # continued


def test_strategy_choices_are_the_strategies_there_are() -> None:
    assert set(CHOICES["deploy_strategy"]) == set(STRATEGIES)


def test_schema_file_is_parsed_never_run() -> None:
    with pytest.raises(ValueError, match="line 2: b is not a constant"):
        parse_schema("a = 1\nb = __import__('os').system('false')\n")


# --- --data ---------------------------------------------------------------------------------


def test_cli_values_are_read_as_pyinfra_reads_them() -> None:
    samples = ["8000", "true", "FALSE", "[8001, 8002]", "1.5", "null", '"0.10"', "eighty", "{}"]
    code = (
        "import json, sys\nfrom pyinfra_cli.util import parse_cli_arg\n"
        "print(json.dumps([parse_cli_arg(a) for a in sys.argv[1:]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *samples], capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout) == [parse_cli_value(s) for s in samples]


def test_data_unknown_key_names_the_nearest_setting() -> None:
    assert check_data(["deploy_stratgy=bluegreen"]) == [
        "--data: unknown setting 'deploy_stratgy' (did you mean 'deploy_strategy'?)"
    ]


def test_a_replaced_setting_names_the_one_to_set_instead() -> None:
    assert check_data(["unit_stop_timeout_s=90", "unit_graceful_shutdown_s=30"]) == [
        "--data: setting 'unit_stop_timeout_s' was replaced: set drain_timeout_s (the stop "
        "timeout follows it, 15 s above) instead",
        "--data: setting 'unit_graceful_shutdown_s' was replaced: set drain_timeout_s instead",
    ]


def test_data_wrong_type_names_key_value_and_what_is_expected() -> None:
    assert check_data(["app_port=eighty"]) == [
        "--data: app_port: expected an integer, got 'eighty'"
    ]
    assert check_data(["env_allow_empty=1"]) == [
        "--data: env_allow_empty: expected true or false, got '1'"
    ]
    assert check_data(["bluegreen_ports=[8001]"]) == [
        "--data: bluegreen_ports: expected a list of 2 integers, got '[8001]'"
    ]


def test_data_bad_choice() -> None:
    assert check_data(["deploy_strategy=blue"]) == [
        "--data: deploy_strategy: expected one of 'socket', 'restart', 'bluegreen', got 'blue'"
    ]


def test_data_without_equals_sign() -> None:
    with pytest.raises(SettingsError) as exc:
        parse_data(["foo", "app_port=1"])
    assert exc.value.problems == ["--data foo: expected KEY=VALUE"]
    assert check_data(["=x", "app_port=no"]) == [
        "--data =x: expected KEY=VALUE",
        "--data: app_port: expected an integer, got 'no'",
    ]


def test_data_accepts_what_pyinfra_turns_into_the_right_kind() -> None:
    good = [
        "app_port=8000",
        "env_allow_empty=true",
        "bluegreen_ports=[8001, 8002]",
        "health_deadline_s=1.5",
        "gpu_driver_branch=580",  # pyinfra gives 580; it reads back as "580"
        'uv_env={"UV_INDEX_URL": "https://example.invalid/simple"}',
        "env_file=/tmp/x.env",
        "artifact=null",
        "ssh_user=deploy",
        "ssh_strict_host_key_checking=yes",
        "_sudo=false",
    ]
    assert check_data(good) == []


def test_data_number_that_would_lose_its_text_is_refused() -> None:
    (problem,) = check_data(["uv_version=0.10"])
    assert "reads as the number 0.1" in problem
    assert check_data(['uv_version="0.10"']) == []


def test_pyinfra_keys_are_allowed() -> None:
    for name in ("_sudo", "_su_user", "ssh_port", "ssh_known_hosts_file", "docker_identifier"):
        assert is_pyinfra_key(name)
    assert not is_pyinfra_key("sshuser")


# --- group_data files -----------------------------------------------------------------------


def test_group_data_unknown_key_names_file_and_nearest_setting(tmp_path: Path) -> None:
    (tmp_path / "prod.py").write_text("import os\n\nhealth_dedline_s = 600\n_sudo = True\n")
    assert check_group_dir(tmp_path) == [
        "group_data/prod.py: unknown setting 'health_dedline_s' (did you mean 'health_deadline_s'?)"
    ]


def test_group_data_wrong_type_names_file(tmp_path: Path) -> None:
    (tmp_path / "staging.py").write_text('app_port = "8000"\nuv_python_downloads = "always"\n')
    assert check_group_dir(tmp_path) == [
        "group_data/staging.py: app_port: expected an integer, got '8000'",
        "group_data/staging.py: uv_python_downloads: expected one of 'never', 'manual', "
        "'automatic', got 'always'",
    ]


def test_the_projects_group_data_checks() -> None:
    assert check_group_dir(ROOT / "group_data") == []


# --- ai-deploy.toml -------------------------------------------------------------------------

APP_TOML = """\
deploy_strategy = "bluegreen"
app_port = 9000

[environments.production]
hosts = ["203.0.113.10"]
health_deadline_s = 900

[environments.staging]
hosts = ["203.0.113.20"]
app_port = 9100
"""


def test_app_file_unknown_key_at_top_and_in_an_environment() -> None:
    text = 'app_prot = 1\n[environments.production]\nhosts = ["a"]\nreleases_kep = 3\n'
    with pytest.raises(SettingsError) as exc:
        parse_app_settings(text, Path("ai-deploy.toml"))
    assert exc.value.problems == [
        "ai-deploy.toml: unknown setting 'app_prot' (did you mean 'app_port'?)",
        "ai-deploy.toml [environments.production]: unknown setting 'releases_kep' "
        "(did you mean 'releases_keep'?)",
    ]


def test_app_file_wrong_types_and_misplaced_hosts() -> None:
    text = 'hosts = ["a"]\napp_port = "80"\n[environments.prod]\nhosts = "a"\n'
    with pytest.raises(SettingsError) as exc:
        parse_app_settings(text)
    assert exc.value.problems == [
        "ai-deploy.toml: hosts belongs in an [environments.<name>] table",
        "ai-deploy.toml: app_port: expected an integer, got '80'",
        "ai-deploy.toml [environments.prod]: hosts: expected a list of addresses, got 'a'",
    ]


def test_app_file_not_toml() -> None:
    with pytest.raises(SettingsError, match=r"ai-deploy.toml: not valid TOML"):
        parse_app_settings("app_port = \n")


def test_app_file_found_in_cwd_or_named_by_env(tmp_path: Path) -> None:
    (tmp_path / "ai-deploy.toml").write_text(APP_TOML)
    app = load_app_settings(tmp_path, {})
    assert app.settings == {"deploy_strategy": "bluegreen", "app_port": 9000}
    assert app.environments["production"].hosts == ["203.0.113.10"]
    other = tmp_path / "other.toml"
    other.write_text("releases_keep = 2\n")
    assert load_app_settings(tmp_path, {PATH_ENV: str(other)}).settings == {"releases_keep": 2}
    with pytest.raises(SettingsError, match="no such file"):
        load_app_settings(tmp_path, {PATH_ENV: str(tmp_path / "missing.toml")})
    assert load_app_settings(tmp_path / "nowhere", {}).path is None


# --- merged settings ------------------------------------------------------------------------


def test_merged_settings_carry_their_sources_in_precedence_order(tmp_path: Path) -> None:
    (tmp_path / "ai-deploy.toml").write_text(APP_TOML)
    merged = merged_settings("staging", ["app_port=9200"], tmp_path, environ={})
    assert (merged["app_root"].value, merged["app_root"].source) == (
        "/app/ai-server",
        "derived from app_name",
    )
    assert merged["health_deadline_s"].source == "group_data/prod.py"
    assert (merged["deploy_strategy"].value, merged["deploy_strategy"].source) == (
        "bluegreen",
        "ai-deploy.toml",
    )
    assert (merged["app_port"].value, merged["app_port"].source) == (9200, "--data")
    production = merged_settings("production", [], tmp_path, environ={})
    assert (production["health_deadline_s"].value, production["health_deadline_s"].source) == (
        900,
        "ai-deploy.toml [environments.production]",
    )
    with pytest.raises(SettingsError, match=r"no \[environments.qa\].*production, staging"):
        merged_settings("qa", [], tmp_path, environ={})


# --- the hooks ------------------------------------------------------------------------------


def test_ci_check_is_a_config_failure_and_names_the_settings_file(tmp_path: Path) -> None:
    (tmp_path / "ai-deploy.toml").write_text(APP_TOML)
    environ: dict[str, str] = {}
    with pytest.raises(PhaseFailed) as exc:
        check_settings(["deploy_stratgy=x", "foo"], environ, tmp_path)
    assert exc.value.phase == "config"
    assert "unknown setting 'deploy_stratgy' (did you mean 'deploy_strategy'?)" in str(exc.value)
    assert "--data foo: expected KEY=VALUE" in str(exc.value)
    check_settings(["app_port=8000"], environ, tmp_path)
    assert environ[PATH_ENV] == str((tmp_path / "ai-deploy.toml").resolve())


def test_deploy_py_check_reads_each_pyinfra_data_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyinfra.api import Inventory

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # its known_hosts, not the user's

    defaults = group_data_defaults()
    inv = Inventory(
        (["h1"], defaults),
        override_data={"deploy_stratgy": "x", "app_port": 8001, "ssh_user": "u"},
        prod=([("h1", {"ssh_port": 22, "releases_keep": "five"})], {"health_dedline_s": 1}),
    )
    with pytest.raises(SystemExit) as exc:
        check_host(inv.get_host("h1"))
    message = str(exc.value.code)
    assert "--data: unknown setting 'deploy_stratgy' (did you mean 'deploy_strategy'?)" in message
    assert "inventory data of h1: releases_keep: expected an integer, got 'five'" in message
    assert "group_data/prod.py: unknown setting 'health_dedline_s'" in message
    assert "app_port" not in message and "ssh_" not in message
    # No group data at all (pyinfra run from elsewhere): the project's all.py still applies.
    bare = Inventory((["h2"], {}))
    check_host(bare.get_host("h2"))
    assert bare.get_host("h2").data.app_root == "/app/ai-server"


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AI_DEPLOY_")}
    # Host keys learnt go to ai-deploy's known_hosts under here, never the user's.
    environ["XDG_CONFIG_HOME"] = str(Path(tempfile.gettempdir()) / "ai-deploy-test-config")
    return subprocess.run(
        cmd,
        cwd=cwd,
        env={**environ, **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def test_pyinfra_with_the_prod_inventory_stops_before_connecting(tmp_path: Path) -> None:
    # The host is a closed loopback port: were the check missing, the run would fail to connect.
    proc = _run(
        [str(VENV_BIN / "pyinfra"), "-y", str(ROOT / "inventories/prod.py"),
         str(ROOT / "deploy.py"), "--data", "deploy_stratgy=bluegreen"],
        tmp_path,
        AI_DEPLOY_HOSTS="127.0.0.1",
        AI_DEPLOY_SSH_ENDPOINTS="127.0.0.1=127.0.0.1:1",
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "unknown setting 'deploy_stratgy' (did you mean 'deploy_strategy'?)" in out
    assert "Connecting to hosts" not in out
    assert not (tmp_path / "pyinfra-debug.log").exists()


def test_pyinfra_deploy_py_stops_before_its_first_operation() -> None:
    # --dry as well: even were the check missing, nothing would be changed.
    proc = _run(
        [str(VENV_BIN / "pyinfra"), "--dry", "@local", "deploy.py",
         "--data", "deploy_stratgy=bluegreen"],
        ROOT,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "deploy.py: invalid settings, nothing was changed" in out
    assert "unknown setting 'deploy_stratgy' (did you mean 'deploy_strategy'?)" in out
    assert "Ensure" not in out  # no operation was even prepared


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (("app_port=60000",), "127.0.0.1:70000 (app_port + 10000), which is past 65535"),
        (("lb_upstream_port=8000",), "127.0.0.1:8000 (lb_upstream_port), which is a port nginx"),
    ],
)
def test_pyinfra_deploy_py_refuses_an_upstream_port_the_front_cannot_use(
    data: tuple[str, ...], why: str
) -> None:
    args = [a for d in ("lb_drain=true", *data) for a in ("--data", d)]
    proc = _run([str(VENV_BIN / "pyinfra"), "--dry", "@local", "deploy.py", *args], ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "deploy.py: invalid settings, nothing was changed" in out and why in out, out
    assert "Ensure" not in out  # before the host's first operation
    ok = _run(
        [
            str(VENV_BIN / "pyinfra"),
            "--dry",
            "@local",
            "deploy.py",
            "--data",
            "app_port=60000",
            "--data",
            "lb_drain=false",
            "--data",
            "deploy_stratgy=x",
        ],
        ROOT,
    )
    assert "past 65535" not in ok.stdout + ok.stderr  # without lb_drain the port is never used


_HOST_SETTINGS = (
    "import json, sys\n"
    "from ai_deploy.inventory import host_settings\n"
    "found = host_settings(sys.argv[1])\n"
    "print(json.dumps([{'name': n, 'data': d.dict()} for n, d in found.items()], default=str))\n"
)


def _host_settings(inventory: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Each host's data as every `ai-deploy` command reads it (ai_deploy.inventory)."""
    return _run([str(VENV_BIN / "python"), "-c", _HOST_SETTINGS, inventory], cwd, **env)


def test_prod_inventory_from_another_directory_has_the_projects_group_data(
    tmp_path: Path,
) -> None:
    (tmp_path / "ai-deploy.toml").write_text(APP_TOML)
    proc = _host_settings(str(ROOT / "inventories/prod.py"), tmp_path, AI_DEPLOY_HOSTS="127.0.0.1")
    assert proc.returncode == 0, proc.stderr
    (host,) = json.loads(proc.stdout)
    assert host["data"]["app_root"] == "/app/ai-server"  # derived from app_name
    # group_data/prod.py's 600 is overridden by the production environment's table, which
    # applies when no environment is named.
    assert host["data"]["health_deadline_s"] == 900
    assert host["data"]["deploy_strategy"] == "bluegreen"  # ai-deploy.toml
    assert host["data"]["gpu_reboot_timeout_s"] == 600  # group_data/all.py


def test_environment_picks_its_hosts_and_settings_in_the_inventory(tmp_path: Path) -> None:
    """`-e staging` (AI_DEPLOY_ENVIRONMENT) gives the inventory staging's hosts and settings;
    nothing named gives production's; a missing one is an error naming those there are."""
    (tmp_path / "ai-deploy.toml").write_text(APP_TOML)
    inventory = str(ROOT / "inventories/prod.py")
    staging = _host_settings(inventory, tmp_path, AI_DEPLOY_ENVIRONMENT="staging")
    assert staging.returncode == 0, staging.stderr
    (host,) = json.loads(staging.stdout)
    assert host["name"] == "203.0.113.20" and host["data"]["app_port"] == 9100
    production = _host_settings(inventory, tmp_path)
    (host,) = json.loads(production.stdout)
    assert host["name"] == "203.0.113.10" and host["data"]["health_deadline_s"] == 900
    missing = _host_settings(inventory, tmp_path, AI_DEPLOY_ENVIRONMENT="qa")
    assert missing.returncode != 0
    assert "no [environments.qa]" in missing.stdout + missing.stderr
    assert "production, staging" in missing.stdout + missing.stderr


def test_ai_deploy_deploy_with_bad_data_exits_2_before_anything(tmp_path: Path) -> None:
    artifact = tmp_path / "app.tar.gz"
    artifact.write_bytes(b"")
    proc = _run(
        [str(VENV_BIN / "ai-deploy"), "deploy", "--no-gcp", "--host", "127.0.0.1",
         "--artifact", str(artifact), "--data", "foo", "--data", "app_port=eighty"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--data foo: expected KEY=VALUE" in proc.stderr
    assert "--data: app_port: expected an integer, got 'eighty'" in proc.stderr
    assert not (tmp_path / "pyinfra-debug.log").exists()
    assert not (ROOT / "pyinfra-debug.log").exists()
