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


def _unit() -> configparser.ConfigParser:
    text = jinja2.Template((TEMPLATES / "ai-server.service.j2").read_text()).render(**VALUES)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


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


def test_logrotate_copies_and_truncates_both_logs() -> None:
    text = jinja2.Template((TEMPLATES / "logrotate.j2").read_text()).render(
        log_dir="/var/log/dojangkok", app_name="ai-server", keep_days=14
    )
    first = text.splitlines()[2]
    assert "/var/log/dojangkok/ai-server.log" in first
    assert "/var/log/dojangkok/ai-server-error.log" in first
    assert "copytruncate" in text and "rotate 14" in text
