"""The systemd units of the deploy strategy (group_data deploy_strategy), rendered from
templates/ and enabled at boot; daemon-reload only when a unit file changed.

- restart: ai-server.service binds the port itself.
- socket: ai-server.socket owns the port, ai-server.service takes it (`uvicorn --fd 3`).
- bluegreen: ai-server@blue / ai-server@green on internal ports, nginx on the public port.

Moving the running service from one strategy to another happens in the release task, behind
the health gate (ai_deploy.strategies); this task only puts the files in place.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, systemd

from tasks.paths import template

STRATEGIES = ("restart", "socket", "bluegreen")
COLOURS = ("blue", "green")


def _common() -> dict[str, object]:
    d = host.data
    return {
        "description": f"{d.app_name} (FastAPI, uvicorn)",
        "service_user": d.app_user,
        "service_group": d.app_group,
        "app_root": d.app_root,
        "app_name": d.app_name,
        "module": d.app_module,
        "host": d.app_host,
        "port": d.app_port,
        "graceful_shutdown_s": d.unit_graceful_shutdown_s,
        "stop_timeout_s": d.unit_stop_timeout_s,
        "restart_sec": d.unit_restart_sec,
        "log_dir": d.app_log_dir,
    }


@deploy("systemd units")
def unit_installed() -> bool:
    """Returns whether a unit file will change (the release task then restarts)."""
    d = host.data
    strategy = d.deploy_strategy
    if strategy not in STRATEGIES:
        raise OperationError(
            f"deploy_strategy {strategy!r} is not one of {', '.join(STRATEGIES)} (group_data)"
        )
    unit_dir = "/etc/systemd/system"
    changes: list[OperationMeta] = []
    if strategy in ("restart", "socket"):
        changes.append(
            files.template(
                name=f"Ensure the {d.app_name} unit is rendered ({strategy})",
                src=template("ai-server.service.j2"),
                dest=f"{unit_dir}/{d.app_name}.service",
                mode="644",
                socket=strategy == "socket",
                **_common(),
            )
        )
    if strategy == "socket":
        changes.append(
            files.template(
                name=f"Ensure the {d.app_name} socket unit is rendered",
                src=template("ai-server.socket.j2"),
                dest=f"{unit_dir}/{d.app_name}.socket",
                mode="644",
                app_name=d.app_name,
                listen=f"{d.app_host}:{d.app_port}",
                backlog=d.socket_backlog,
            )
        )
    if strategy == "bluegreen":
        changes += _bluegreen_files()
    unit_changed = any(op.will_change for op in changes)
    systemd.daemon_reload(name="Reload systemd: a unit changed", _if=lambda: unit_changed)
    if strategy == "restart":
        systemd.service(
            name=f"Ensure {d.app_name} starts at boot",
            service=f"{d.app_name}.service",
            running=None,
            enabled=True,
        )
    # socket: the gate enables the socket when a release is in service (an enabled socket on a
    # host with no release would accept connections nothing answers).
    # bluegreen: the gate enables nginx and the live colour when it moves traffic.
    return unit_changed


def _bluegreen_files() -> list[OperationMeta]:
    d = host.data
    blue_port, green_port = (int(p) for p in d.bluegreen_ports)
    if "nginx" not in host.get_fact(DebPackages):
        apt.packages(
            name="Ensure nginx is installed (blue/green proxy)",
            packages=["nginx"],
            update=True,
            cache_time=86400,
        )
    files.link(
        name="Ensure nginx's default site (port 80) is off",
        path="/etc/nginx/sites-enabled/default",
        present=False,
    )
    upstream = d.bluegreen_upstream
    if not host.get_fact(File, path=upstream):
        files.put(
            name="Ensure the blue/green upstream file exists",
            src=StringIO(f"server 127.0.0.1:{blue_port};\n"),
            dest=upstream,
            mode="644",
        )
    files.template(
        name="Ensure the nginx site for blue/green is rendered",
        src=template("ai-server.nginx.j2"),
        dest=f"/etc/nginx/sites-available/{d.app_name}",
        mode="644",
        app_name=d.app_name,
        upstream=upstream,
        host=d.app_host,
        port=d.app_port,
        log_dir=d.app_log_dir,
        read_timeout_s=d.unit_stop_timeout_s,
    )
    files.directory(
        name="Ensure the colours directory exists",
        path=f"{d.app_root}/colors",
        user=d.code_owner,
        group=d.code_owner,
        mode="755",
    )
    files.put(
        name=f"Ensure blue listens on {blue_port} and green on {green_port}",
        src=StringIO(f"blue_PORT={blue_port}\ngreen_PORT={green_port}\n"),
        dest=f"{d.app_root}/colors/ports.env",
        mode="644",
    )
    return [
        files.template(
            name=f"Ensure the {d.app_name}@ unit is rendered (blue/green)",
            src=template("ai-server@.service.j2"),
            dest=f"/etc/systemd/system/{d.app_name}@.service",
            mode="644",
            **_common(),
        )
    ]
