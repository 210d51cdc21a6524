"""The lb front of the in-place strategies (socket, restart) with lb_drain on: nginx takes the
public port and answers lb_health_path, and the app (or its socket) listens on
127.0.0.1:lb_upstream_port behind it. With lb_drain off none of this exists: the units and the
host are exactly those of the strategy alone, and a front left from an earlier run is taken
away when the next release goes live."""

from __future__ import annotations

import shlex
from typing import Any

from ai_deploy.host.paths import LB_FRONT_MARK
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec, flag, lb_upstream_port
from ai_deploy.host.strategies.base import must
from ai_deploy.host.strategies.nginx import nginx_installed, site_rendered


def listen(data: Any) -> tuple[str, int]:
    """Where the app (or its socket) listens: the public address, or loopback behind the front
    (ValueError naming the fix when that port cannot be: past 65535, or one nginx takes)."""
    if not flag(data.lb_drain):
        return str(data.app_host), int(data.app_port)
    port = lb_upstream_port(data.app_port, data.lb_upstream_port)
    taken = {int(data.app_port), int(data.lb_health_port or data.app_port)}
    if port > 65535 or port in taken:
        why = "is past 65535" if port > 65535 else "is a port nginx's front listens on"
        given = "lb_upstream_port" if data.lb_upstream_port else "app_port + 10000"
        raise ValueError(
            f"with lb_drain the app listens on 127.0.0.1:{port} ({given}), which {why}: set "
            "lb_upstream_port to a free port from 1 to 65535 other than app_port and "
            "lb_health_port"
        )
    return "127.0.0.1", port


def app_port(spec: Spec) -> int:
    """The port the app's own process serves (what the gate probes, what a stop counts)."""
    return spec.lb_upstream_port if spec.lb_drain else spec.port


def prepare_host(data: Any) -> None:
    """nginx and the front's site (enabled when a release goes live); nothing without lb_drain."""
    if not flag(data.lb_drain):
        return
    nginx_installed(data)
    site_rendered(data, front=listen(data)[1], what="the lb front")


def is_front(remote: Remote, spec: Spec) -> bool:
    """The host's enabled site is the lb front (not blue/green's, not none)."""
    site = shlex.quote(spec.layout.nginx_site)
    return remote.run(f"grep -qs {shlex.quote('^' + LB_FRONT_MARK)} {site}").ok


def must_move(remote: Remote, spec: Spec) -> bool:
    """The public port changes hands between the app and the front (lb_drain turned on/off)."""
    return is_front(remote, spec) != spec.lb_drain


def take(remote: Remote, spec: Spec) -> None:
    """With lb_drain: the front's site enabled and nginx serving it (public port); without:
    a front left from lb_drain taken away, its port freed. The app must not hold the port."""
    layout = spec.layout
    site = shlex.quote(layout.nginx_site)
    if spec.lb_drain:
        must(
            remote,
            f"ln -sfn ../sites-available/{shlex.quote(spec.app_name)} {site} && nginx -t -q && "
            "systemctl enable nginx >/dev/null 2>&1 && "
            "if systemctl is-active --quiet nginx; then systemctl reload nginx; "
            "else systemctl start nginx; fi",
            "starting nginx's lb front",
        )
        remote.say(f"nginx holds port {spec.port} and answers {spec.lb_health_path}")
        return
    if not is_front(remote, spec):
        return
    remote.say("lb_drain is off: nginx's lb front leaves the public port")
    remote.run(
        f'rm -f {site} {shlex.quote(layout.lb_drained)} && if [ -z "$(ls -A '
        '/etc/nginx/sites-enabled)" ]; then systemctl disable --now nginx; '
        "else systemctl reload nginx; fi; true"
    )
    # A reload frees the port asynchronously: the app must not race it.
    remote.run(
        f"for i in $(seq 50); do ss -Htln '( sport = :{spec.port} )' | grep -q . || exit 0; "
        "sleep 0.2; done; exit 0"
    )
