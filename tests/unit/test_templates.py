"""The templates render to what systemd and logrotate need."""

from __future__ import annotations

import configparser
from pathlib import Path

import jinja2
import pytest

pytestmark = pytest.mark.unit
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
VALUES = {
    "description": "ai-server (FastAPI, uvicorn)",
    "service_user": "ubuntu",
    "service_group": "ubuntu",
    "app_root": "/app/ai-server",
    "app_name": "ai-server",
    "module": "main:app",
    "host": "0.0.0.0",
    "port": 8000,
    "graceful_shutdown_s": 30,
    "stop_timeout_s": 45,
    "restart_sec": 5,
    "log_dir": "/var/log/dojangkok",
}


def _parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _render(name: str, **extra: object) -> str:
    return jinja2.Template((TEMPLATES / name).read_text()).render(**VALUES, **extra)


def _unit(socket: bool = False) -> configparser.ConfigParser:
    return _parse(_render("ai-server.service.j2", socket=socket))


def test_unit_keeps_what_the_seed_unit_has() -> None:
    service = _unit()["Service"]
    assert service["User"] == "ubuntu" and service["Group"] == "ubuntu"
    assert service["WorkingDirectory"] == "/app/ai-server/current"
    assert service["EnvironmentFile"] == "/app/ai-server/.env"
    assert service["Restart"] == "on-failure" and service["RestartSec"] == "5"
    assert service["StandardOutput"] == "append:/var/log/dojangkok/ai-server.log"
    assert service["StandardError"] == "append:/var/log/dojangkok/ai-server-error.log"
    assert service["ExecStart"].startswith("/app/ai-server/current/.venv/bin/uvicorn main:app ")
    assert "--host 0.0.0.0 --port 8000" in service["ExecStart"]
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_graceful_shutdown_ends_before_systemd_kills() -> None:
    service = _unit()["Service"]
    graceful = int(service["ExecStart"].split("--timeout-graceful-shutdown ")[1].split()[0])
    assert graceful == 30
    assert int(service["TimeoutStopSec"]) > graceful


def test_unit_does_not_hide_the_gpu() -> None:
    service = _unit()["Service"]
    hiding = {"PrivateDevices", "DevicePolicy", "ProtectKernelModules", "PrivateUsers"}
    assert not hiding & set(service), "an option that hides /dev/nvidia* from the service"


def test_no_release_means_nothing_to_start() -> None:
    assert _unit()["Unit"]["ConditionPathExists"] == "/app/ai-server/current"


def test_logrotate_copies_and_truncates_every_log_of_the_service() -> None:
    import fnmatch

    text = jinja2.Template((TEMPLATES / "logrotate.j2").read_text()).render(
        log_dir="/var/log/dojangkok", app_name="ai-server", keep_days=14
    )
    pattern = text.splitlines()[2].split()[0]
    for log in ("ai-server.log", "ai-server-error.log", "ai-server-blue-error.log"):
        assert fnmatch.fnmatch(f"/var/log/dojangkok/{log}", pattern)
    assert "copytruncate" in text and "rotate 14" in text


def test_socket_flavour_takes_the_port_from_the_socket() -> None:
    unit = _unit(socket=True)
    assert unit["Unit"]["Requires"] == "ai-server.socket"
    exec_start = unit["Service"]["ExecStart"]
    assert "--fd 3" in exec_start and "--port" not in exec_start
    assert "Install" not in unit  # the socket is what starts at boot
    socket = _parse(
        jinja2.Template((TEMPLATES / "ai-server.socket.j2").read_text()).render(
            app_name="ai-server", listen="0.0.0.0:8000", backlog=4096
        )
    )
    assert socket["Socket"]["ListenStream"] == "0.0.0.0:8000"
    assert socket["Install"]["WantedBy"] == "sockets.target"


def test_colour_instances_listen_inside_only() -> None:
    unit = _parse(_render("ai-server@.service.j2"))
    service = unit["Service"]
    assert "--host 127.0.0.1 --port ${%i_PORT}" in service["ExecStart"]
    assert service["EnvironmentFile"].endswith("/app/ai-server/colors/ports.env")
    assert service["WorkingDirectory"] == "/app/ai-server/colors/%i"
    assert service["StandardError"] == "append:/var/log/dojangkok/ai-server-%i-error.log"
    site = _render("ai-server.nginx.j2", upstream="/etc/nginx/up.conf", read_timeout_s=45)
    assert "include /etc/nginx/up.conf;" in site
    assert "listen 0.0.0.0:8000;" in site
