"""The systemd unit, rendered from templates/ai-server.service.j2 and enabled at boot;
daemon-reload only when the unit file changed."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd

from tasks.paths import template


@deploy("systemd unit")
def unit_installed() -> OperationMeta:
    """Returns the template operation, so the release task knows whether to restart."""
    d = host.data
    unit = files.template(
        name=f"Ensure the {d.app_name} unit is rendered",
        src=template("ai-server.service.j2"),
        dest=f"/etc/systemd/system/{d.app_name}.service",
        mode="644",
        description=f"{d.app_name} (FastAPI, uvicorn)",
        service_user=d.app_user,
        service_group=d.app_group,
        app_root=d.app_root,
        app_name=d.app_name,
        module=d.app_module,
        host=d.app_host,
        port=d.app_port,
        graceful_shutdown_s=d.unit_graceful_shutdown_s,
        stop_timeout_s=d.unit_stop_timeout_s,
        restart_sec=d.unit_restart_sec,
        log_dir=d.app_log_dir,
    )
    systemd.daemon_reload(name="Reload systemd: the unit changed", _if=unit.did_change)
    systemd.service(
        name=f"Ensure {d.app_name} starts at boot",
        service=f"{d.app_name}.service",
        running=None,
        enabled=True,
    )
    return unit
