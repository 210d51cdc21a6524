"""The systemd units of the deploy strategy (group_data deploy_strategy), rendered from
templates/ and enabled at boot where the strategy says so; daemon-reload only when a unit file
changed. Which files a strategy needs, and how a host leaves one strategy for another, is the
strategy's own (ai_deploy.host.strategies); this task only puts its files in place."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.operations import files, systemd

from ai_deploy.artifact.importpath import service_pythonpath
from ai_deploy.host import strategies
from ai_deploy.host.cache import cache_environment, unit_environment
from ai_deploy.host.drain import unit_drain_values
from ai_deploy.host.paths import UNIT_DIR, Layout
from ai_deploy.host.strategies.nginx import keep_alive_s
from ai_deploy.project import template


def _common() -> dict[str, object]:
    d = host.data
    layout = Layout.from_data(d)
    return {
        "description": f"{d.app_name} (FastAPI, uvicorn)",
        "service_user": d.app_user,
        "service_group": d.app_group,
        "app_root": d.app_root,
        "app_name": d.app_name,
        "module": d.app_module,
        "python_path": service_pythonpath(),
        "host": d.app_host,
        "port": d.app_port,
        **unit_drain_values(d.drain_timeout_s),
        "restart_sec": d.unit_restart_sec,
        "log_dir": d.app_log_dir,
        # ProtectSystem=strict leaves these writable, nothing else (the logs are opened by
        # systemd itself; the app may add its own files there).
        "read_write_paths": [f"{d.app_root}/{name}" for name in d.app_data_dirs]
        + [d.app_log_dir, layout.cache_dir],
        "environment": unit_environment(cache_environment(layout, d.app_cache_env)),
        "gpu_devices": list(d.unit_gpu_devices),
        "socket": False,
        "keep_alive_s": keep_alive_s(d),  # lb_drain: above the load balancer's own
    }


@deploy("systemd units")
def unit_installed() -> bool:
    """Returns whether a unit file will change (the release task then restarts)."""
    d = host.data
    try:
        strategy = strategies.get(d.deploy_strategy)
    except strategies.UnknownStrategy as exc:
        raise OperationError(str(exc)) from None
    layout = Layout.from_data(d)
    strategy.prepare_host(d)
    changes = [
        files.template(
            name=f"Ensure the unit {unit.unit} is rendered ({strategy.name})",
            src=template(unit.template),
            dest=f"{UNIT_DIR}/{unit.unit}",
            mode="644",
            **{**_common(), **unit.context},
        )
        for unit in strategy.unit_files(d)
    ]
    unit_changed = any(op.will_change for op in changes)
    systemd.daemon_reload(name="Reload systemd: a unit changed", _if=lambda: unit_changed)
    for unit_name in strategy.boot_units(layout):
        systemd.service(
            name=f"Ensure {unit_name} starts at boot",
            service=unit_name,
            running=None,
            enabled=True,
        )
    return unit_changed
