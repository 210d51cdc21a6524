"""String settings that reach a unit, the nginx site, logrotate, a shell script or a Python probe
are checked against a value rule wherever settings are checked (--data, group_data files,
ai-deploy.toml, a plain pyinfra run): a value that would add a directive, a line, a path outside
the one named or code is refused, named with its setting, its repr and the rule. The scripts
that carry such values quote them as well."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from ai_deploy.appinit.init import _app_name
from ai_deploy.ci.options import PhaseFailed
from ai_deploy.ci.settings_probe import check_settings
from ai_deploy.host.gpu import probe_script as gpu_probe_script
from ai_deploy.host.release.health import probe_script
from ai_deploy.project import group_data_defaults
from ai_deploy.settings.appfile import parse_app_settings
from ai_deploy.settings.check import check_data, check_group_dir, check_values
from ai_deploy.settings.pyinfra_hooks import check_host

pytestmark = pytest.mark.unit

UNIT_LINE = "\nExecStartPre=+/bin/sh -c 'id > /root/pwned'\nUser=root\nProtectSystem=no"
PATHS = ("app_root", "app_log_dir", "app_cache_dir", "uv_path", "bluegreen_upstream")
NAMES = ("app_name", "app_user", "app_group", "code_owner", "build_user")

# Values every path setting refuses: a unit directive after a newline, a way out of the
# directory, command substitution, quotes, systemd specifiers and variables, nginx's ;.
BAD_PATHS = (
    "/app/x" + UNIT_LINE,
    "/app/../etc",
    "/app/x/..",
    "app/relative",
    "/app//x",
    "/app/x/",
    "/app/$(id)",
    "/app/`id`",
    "/app/x'y",
    '/app/x"y',
    "/app/%h",
    "/app/${HOME}",
    "/app/x;include /etc/passwd",
    "/app/x y",
    "/app/x\ty",
    "/app/x\x00",
    "/app/x\\y",
)
BAD_NAMES = (
    "ai" + UNIT_LINE,
    "../etc",
    "a/b",
    "Ai-Server",
    "-ai",
    ".ai",
    "ai server",
    "$(id)",
    "ai'x",
    "ai%n",
    "",
)


def _problems(name: str, value: object) -> list[str]:
    return check_values("--data", {name: value})


def _refused(name: str, value: object) -> None:
    problems = _problems(name, value)
    assert problems, f"{name}={value!r} was accepted"
    assert f"--data: {name}: expected " in problems[0]


@pytest.mark.parametrize("name", (*PATHS, "gpu_sysfs_pci"))
@pytest.mark.parametrize("value", BAD_PATHS)
def test_a_path_setting_refuses_anything_but_a_clean_absolute_path(name: str, value: str) -> None:
    _refused(name, value)
    assert repr(value) in _problems(name, value)[0]


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("value", ["/app/x", "/srv/my-app_2/v1.0", "/var/log/a@b+c"])
def test_a_clean_absolute_path_passes(name: str, value: str) -> None:
    assert _problems(name, value) == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", BAD_NAMES)
def test_a_name_setting_refuses_anything_but_a_plain_name(name: str, value: str) -> None:
    _refused(name, value)


@pytest.mark.parametrize("name", NAMES)
def test_plain_names_pass(name: str) -> None:
    assert _problems(name, "ai-server") == []
    assert _problems(name, "svc.2_x") == []


@pytest.mark.parametrize("name", ("app_user", "code_owner", "build_user"))
def test_a_user_name_is_at_most_32_characters(name: str) -> None:
    assert _problems(name, "a" * 32) == []
    _refused(name, "a" * 33)


@pytest.mark.parametrize(
    "value",
    [
        "main:app" + UNIT_LINE,
        "main:app --host 0.0.0.0",
        "main:app;id",
        "$(id):app",
        "main",
        "main:",
        ":app",
        "../main:app",
        "main/x:app",
        "main:app'",
        "main:%h",
        "1main:app",
    ],
)
def test_app_module_is_a_module_path_and_an_attribute(value: str) -> None:
    _refused("app_module", value)


@pytest.mark.parametrize(
    "value", ["main:app", "my_pkg.server:create_app", "a.b.c:obj.attr", "\U0001d44epp.server:app"]
)
def test_ordinary_app_modules_pass(value: str) -> None:
    assert _problems("app_module", value) == []


@pytest.mark.parametrize(
    "value",
    [
        "0.0.0.0:80;\n    location / { root /; }",
        "0.0.0.0 --reload",
        "127.0.0.1\nUser=root",
        "$(id)",
        "host;",
        "-bad.example",
        "a..b",
        "",
    ],
)
@pytest.mark.parametrize("name", ("app_host", "models_metadata_host"))
def test_a_host_is_an_ip_address_or_a_host_name(name: str, value: str) -> None:
    _refused(name, value)


@pytest.mark.parametrize("value", ["0.0.0.0", "127.0.0.1", "::", "::1", "localhost", "a.b-c.io"])
def test_ordinary_hosts_pass(value: str) -> None:
    assert _problems("app_host", value) == []
    assert _problems("models_metadata_host", value) == []


@pytest.mark.parametrize("value", ["127.0.0.1:8080", "metadata.google.internal:80", "[::1]:80"])
def test_the_metadata_host_may_name_a_port(value: str) -> None:
    assert _problems("models_metadata_host", value) == []
    _refused("app_host", value)


@pytest.mark.parametrize(
    "value",
    [
        "health",
        '/health", timeout=2) as r:\n    import os; os.system("id")\n#',
        "/health\nEOF\nid\n",
        "/health'",
        "/health`id`",
        "/a b",
        "/a\\b",
        "/a\x1b[2J",
    ],
)
def test_health_path_is_a_url_path_with_nothing_that_breaks_out(value: str) -> None:
    _refused("health_path", value)


def test_ordinary_health_paths_pass() -> None:
    assert _problems("health_path", "/health") == []
    assert _problems("health_path", "/v1/ready?deep=1&x=%20") == []


@pytest.mark.parametrize(
    "value",
    [
        "char-nvidia*" + UNIT_LINE,
        "char-nvidia* rw\nDeviceAllow=/dev/sda",
        "/dev/../etc/shadow",
        "/etc/shadow",
        "char-",
        "char-nvidia rw",
        "/dev/$(id)",
        "/dev/%h",
        "net-eth0",
    ],
)
def test_gpu_devices_are_device_allow_entries(value: str) -> None:
    _refused("unit_gpu_devices", ["char-nvidia*", value])
    assert repr(value) in _problems("unit_gpu_devices", [value])[0]


def test_ordinary_gpu_devices_pass() -> None:
    ok = ["char-nvidia*", "char-nvidia-uvm", "block-sd*", "/dev/nvidia0", "/dev/nvidia-caps/*"]
    assert _problems("unit_gpu_devices", ok) == []


@pytest.mark.parametrize("value", ["../../etc", "/etc", "a/../../b", "x\nUser=root", "$(id)", ""])
def test_data_dirs_stay_under_app_root(value: str) -> None:
    _refused("app_data_dirs", ["chroma_db", value])


@pytest.mark.parametrize("name", ("app_cache_env", "uv_env"))
@pytest.mark.parametrize(
    "env",
    [
        {"A B": "1"},
        {"X=1 Y": "2"},
        {"$(id)": "1"},
        {"1A": "1"},
        {"A\nUser=root": "1"},
        {"HF_HOME": "/x\nExecStartPre=+/bin/sh"},
        {"TOKEN": "a\rb"},
    ],
)
def test_environment_tables_take_variable_names_and_one_line_values(
    name: str, env: dict[str, str]
) -> None:
    _refused(name, env)


def test_an_environment_value_is_never_printed() -> None:
    (problem,) = _problems("uv_env", {"UV_INDEX_URL": "https://user:s3cret@x\n"})
    assert "s3cret" not in problem and "UV_INDEX_URL" in problem


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("uv_python", "python3; id"),
        ("uv_python", "$(id)"),
        ("uv_version", "0.13.9 && id"),
        ("gpu_driver_branch", "570;id"),
        ("gpu_installer_url", "https://x/y\nid"),
        ("gpu_installer_url", "file:///etc/passwd"),
        ("models_gcs_url", "https://x/'$(id)'"),
    ],
)
def test_other_strings_used_in_shell_are_plain(name: str, value: str) -> None:
    _refused(name, value)


@pytest.mark.parametrize("value", [0, -5, 86_401])
def test_drain_timeout_s_is_whole_seconds_up_to_a_day(value: int) -> None:
    (problem,) = _problems("drain_timeout_s", value)
    assert "whole seconds from 1 to 86400" in problem and repr(str(value)) in problem
    assert _problems("drain_timeout_s", 1) == [] and _problems("drain_timeout_s", 600) == []


def test_the_defaults_keep_every_rule() -> None:
    assert check_values("group_data/all.py", group_data_defaults()) == []
    assert _problems("gpu_driver_branch", "570") == []
    assert check_data(["gpu_driver_branch=570", "uv_python=3.12", "app_root=/srv/a"]) == []


@pytest.mark.parametrize(
    ("project", "name"), [("My_App", "my_app"), ("Big Model (v2)", "big-model-v2"), ("_x", "x")]
)
def test_init_writes_an_app_name_that_keeps_the_rule(
    tmp_path: Path, project: str, name: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "{project}"\n')
    assert _app_name(tmp_path) == name
    assert _problems("app_name", name) == []


def test_every_place_settings_are_given_applies_the_rules(tmp_path: Path) -> None:
    (problem,) = check_data(["app_module=main:app\nUser=root"])
    assert problem == (
        "--data: app_module: expected module.path:attribute, each part an identifier, "
        "got 'main:app\\nUser=root'"
    )
    (tmp_path / "prod.py").write_text('app_name = "../etc"\n')
    (problem,) = check_group_dir(tmp_path)
    assert problem.startswith("group_data/prod.py: app_name: expected a name matching")
    toml = tmp_path / "ai-deploy.toml"
    toml.write_text('app_host = "0.0.0.0;"\n')
    with pytest.raises(Exception, match=r"app_host: expected an IP address"):
        parse_app_settings(toml.read_text(), toml)


def test_ai_deploy_deploy_stops_before_any_host(tmp_path: Path) -> None:
    with pytest.raises(PhaseFailed) as exc:
        check_settings(["app_log_dir=/var/log/x\nUser=root"], {}, tmp_path)
    assert "app_log_dir: expected an absolute path" in str(exc.value)


def test_a_plain_pyinfra_run_stops_before_its_first_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyinfra.api import Inventory

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    inv = Inventory(
        (["h1"], group_data_defaults()),
        override_data={"unit_gpu_devices": ["char-nvidia*\nUser=root"]},
    )
    with pytest.raises(SystemExit) as exc:
        check_host(inv.get_host("h1"))
    assert "--data: unit_gpu_devices: expected each item" in str(exc.value.code)


def test_the_health_probe_holds_the_path_as_a_python_string() -> None:
    nasty = '/h", timeout=2) as r:\n    import os\n#'
    script = probe_script("a.service", 8000, nasty)
    python = script.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    call = next(
        node
        for node in ast.walk(ast.parse(python))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "urlopen"
    )
    assert ast.literal_eval(call.args[0]) == f"http://127.0.0.1:8000{nasty}"
    assert json.dumps(f"http://127.0.0.1:8000{nasty}") in script
    assert "import os" not in python.replace(json.dumps(f"http://127.0.0.1:8000{nasty}"), "")


def test_the_gpu_probe_quotes_the_sysfs_path(tmp_path: Path) -> None:
    odd = tmp_path / "a b;$(touch pwned)"
    (odd / "0000:01:00.0").mkdir(parents=True)
    for name, text in (("vendor", "0x10de"), ("device", "0x2330"), ("class", "0x030200")):
        (odd / "0000:01:00.0" / name).write_text(text + "\n")
    script = gpu_probe_script(str(odd)).split('echo "== lspci"')[0]
    out = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert "0000:01:00.0 0x10de 0x2330 0x030200" in out.stdout
    assert not (tmp_path / "pwned").exists()
