"""The templates render to what systemd and logrotate need."""

from __future__ import annotations

import configparser
from pathlib import Path

import jinja2
import pytest

from ai_deploy.host.drain import unit_drain_values
from ai_deploy.project import group_data_defaults

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
    "read_write_paths": ["/app/ai-server/chroma_db", "/var/log/dojangkok"],
    "gpu_devices": ["char-nvidia*"],
}
# Every hardened unit (service, socket flavour, colours) sets these exactly.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/app/ai-server/chroma_db /var/log/dojangkok",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictNamespaces": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0027",
    "DevicePolicy": "closed",
    "DeviceAllow": "char-nvidia* rw",
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


def _directives(text: str) -> dict[str, list[str]]:
    """KEY -> every value it is given in [Service] (systemd keeps repeated keys; configparser
    would keep only the last)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


HARDENED_FLAVOURS = {
    "restart": lambda: _render("ai-server.service.j2", socket=False),
    "socket": lambda: _render("ai-server.service.j2", socket=True),
    "colour": lambda: _render("ai-server@.service.j2"),
}


@pytest.mark.parametrize("flavour", sorted(HARDENED_FLAVOURS))
def test_every_flavour_of_the_service_is_hardened(flavour: str) -> None:
    service = _directives(HARDENED_FLAVOURS[flavour]())
    for key, value in HARDENING.items():
        assert service.get(key) == [value], (flavour, key, service.get(key))
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    # torch's JIT needs writable+executable memory: the option is deliberately absent.
    assert "MemoryDenyWriteExecute" not in service


@pytest.mark.parametrize("flavour", sorted(HARDENED_FLAVOURS))
def test_unit_does_not_hide_the_gpu(flavour: str) -> None:
    service = _directives(HARDENED_FLAVOURS[flavour]())
    hiding = {"PrivateDevices", "PrivateUsers"}
    assert not hiding & set(service), "an option that hides /dev/nvidia* from the service"
    assert service["DevicePolicy"] == ["closed"]
    assert "char-nvidia* rw" in service["DeviceAllow"]


def test_every_gpu_device_setting_becomes_a_device_allow() -> None:
    text = _render_with(gpu_devices=["char-nvidia*", "/dev/nvidia0"])
    assert _directives(text)["DeviceAllow"] == ["char-nvidia* rw", "/dev/nvidia0 rw"]


def test_a_port_below_1024_keeps_only_the_bind_capability() -> None:
    service = _directives(_render_with(port=80))
    assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert service["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    # Through the socket the port is bound by systemd: the service needs nothing.
    socket = _directives(_render_with(port=80, socket=True))
    assert socket["CapabilityBoundingSet"] == [""]


def _render_with(**values: object) -> str:
    merged = {**VALUES, "socket": False, **values}
    return jinja2.Template((TEMPLATES / "ai-server.service.j2").read_text()).render(**merged)


def test_nginx_drop_in_is_hardened_but_keeps_what_nginx_needs() -> None:
    text = jinja2.Template((TEMPLATES / "nginx-ai-deploy-hardening.conf.j2").read_text()).render(
        log_dir="/var/log/dojangkok"
    )
    service = _directives(text)
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    writable = service["ReadWritePaths"][0].split()
    assert set(writable) == {"/var/log/nginx", "/var/lib/nginx", "/run", "/var/log/dojangkok"}
    caps = set(service["CapabilityBoundingSet"][0].split())
    assert {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"} <= caps
    assert not {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE"} & caps
    assert service["SystemCallFilter"] == ["@system-service"]
    assert service["UMask"] == ["0027"]


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
    assert socket["Socket"]["Service"] == "ai-server.service"
    assert socket["Socket"]["Accept"] == "no" and socket["Socket"]["ReusePort"] == "no"
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


@pytest.mark.parametrize("flavour", sorted(HARDENED_FLAVOURS))
@pytest.mark.parametrize("drain", [1, 300, 3600])
def test_every_flavour_drains_for_drain_timeout_s_and_systemd_waits_longer(
    flavour: str, drain: int
) -> None:
    extra = {**unit_drain_values(drain), "socket": flavour == "socket"}
    name = "ai-server@.service.j2" if flavour == "colour" else "ai-server.service.j2"
    service = _directives(jinja2.Template((TEMPLATES / name).read_text()).render(VALUES | extra))
    (exec_start,) = service["ExecStart"]
    assert exec_start.split("--timeout-graceful-shutdown ")[1].split()[0] == str(drain)
    assert int(service["TimeoutStopSec"][0]) >= drain + 10  # uvicorn exits before the kill


def test_the_default_drain_protects_a_five_minute_stream() -> None:
    assert group_data_defaults()["drain_timeout_s"] == 300
