"""nginx on the public port, shared by the strategies that put it there: blue/green (always) and
socket / restart with lb_drain (the front that answers lb_health_path). It is Debian's package,
hardened by a systemd drop-in, with our one site `<app_name>` rendered from
templates/ai-server.nginx.j2: its upstream is the live colour (blue/green) or the app's loopback
port (the front)."""

from __future__ import annotations

import re
import shlex
from typing import Any

from ai_deploy.host.drain import stop_timeout_s
from ai_deploy.host.paths import Layout
from ai_deploy.host.settings import Spec, flag

NGINX_HARDENING = "/etc/systemd/system/nginx.service.d/ai-deploy-hardening.conf"
# With lb_drain, the keep-alive of what the load balancer talks to (nginx, and uvicorn behind
# it) outlives the load balancer's own: a GCP backend service keeps idle connections 600 s, and
# a backend that closes first gives it sporadic 502s.
LB_KEEP_ALIVE_S = 620
_NGINX_SAFE_PATH = re.compile(r"/[A-Za-z0-9._~/=&?-]*")


def keep_alive_s(data: Any) -> int | None:
    """uvicorn's --timeout-keep-alive in the unit templates (None: uvicorn's own 5 s)."""
    return LB_KEEP_ALIVE_S if flag(data.lb_drain) else None


def site_values(data: Any, *, front: int | None) -> dict[str, Any]:
    """The nginx site's template values; FRONT: the app's loopback port behind the lb front
    (None: blue/green's upstream file)."""
    spec = Spec.from_data(data)
    lb = spec.lb_drain
    if lb and not _NGINX_SAFE_PATH.fullmatch(spec.health_path):
        raise ValueError(
            f"health_path {spec.health_path!r} cannot be proxied by nginx for lb_health_path: "
            "use letters, digits and . _ ~ - / = & ? only, or set lb_drain = false"
        )
    return {
        "app_name": spec.app_name,
        "upstream": data.bluegreen_upstream,
        "front": front,
        "host": data.app_host,
        "port": spec.port,
        "log_dir": data.app_log_dir,
        "read_timeout_s": stop_timeout_s(data.drain_timeout_s),
        "lb": lb,
        "lb_path": spec.lb_health_path,
        "lb_port": spec.lb_health_port,
        "lb_flag": spec.layout.lb_drained,
        "health_path": spec.health_path,
        "keep_alive_s": keep_alive_s(data),
    }


def nginx_installed(data: Any) -> None:
    """nginx from the distribution, hardened before its first start, its default site off."""
    from pyinfra import host
    from pyinfra.facts.deb import DebPackages
    from pyinfra.operations import apt, files, server, systemd

    from ai_deploy.project import template

    # Before nginx is installed, so that the package's first start is already hardened.
    hardening = files.template(
        name="Ensure nginx runs hardened (systemd drop-in)",
        src=template("nginx-ai-deploy-hardening.conf.j2"),
        dest=NGINX_HARDENING,
        mode="644",
        create_remote_dir=True,
        log_dir=data.app_log_dir,
    )
    systemd.daemon_reload(name="Reload systemd: nginx's drop-in changed", _if=hardening.did_change)
    if "nginx" not in host.get_fact(DebPackages):
        apt.packages(
            name="Ensure nginx is installed (blue/green proxy, lb front)",
            packages=["nginx"],
            update=True,
            cache_time=86400,
        )
    # A running nginx takes new sandbox settings only when it starts again (not on reload).
    server.shell(
        name="Restart nginx, if it runs, under the changed drop-in",
        commands=["systemctl try-restart nginx.service"],
        _if=hardening.did_change,
    )
    files.link(
        name="Ensure nginx's default site (port 80) is off",
        path="/etc/nginx/sites-enabled/default",
        present=False,
    )


def site_rendered(data: Any, *, front: int | None, what: str) -> Any:
    """Our site in sites-available (enabled when a release goes live); the operation. When it
    changed while nginx serves it already (a setting such as lb_health_port or
    drain_timeout_s, with the release unchanged), nginx reloads it gracefully."""
    from pyinfra.api import OperationError
    from pyinfra.operations import files, server

    from ai_deploy.project import template

    try:
        values = site_values(data, front=front)
    except ValueError as exc:
        raise OperationError(str(exc)) from None
    layout = Layout.from_data(data)
    site = files.template(
        name=f"Ensure the nginx site for {what} is rendered",
        src=template("ai-server.nginx.j2"),
        dest=layout.nginx_site_available,
        mode="644",
        **values,
    )
    server.shell(
        name="Reload nginx: the site it serves changed (graceful)",
        commands=[reload_if_served(layout)],
        _if=site.did_change,
    )
    return site


def reload_if_served(layout: Layout) -> str:
    """Shell: a graceful reload of nginx when our site is the enabled one and nginx runs."""
    enabled, target = shlex.quote(layout.nginx_site), f"../sites-available/{layout.app_name}"
    return (
        f'if [ "$(readlink {enabled} 2>/dev/null)" = {shlex.quote(target)} ] && '
        "systemctl is-active --quiet nginx; then nginx -t -q && systemctl reload nginx; fi"
    )
