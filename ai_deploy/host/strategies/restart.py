"""restart: ai-server.service binds the public port itself; a restart refuses connections while
the new process loads (what the hand-written deploy did). With lb_drain, nginx's lb front holds
the public port and the service listens on loopback behind it (ai_deploy.host.strategies.front)."""

from __future__ import annotations

import shlex
from typing import Any

from ai_deploy.host.facts import AppTree
from ai_deploy.host.paths import Layout
from ai_deploy.host.release.health import restart_service
from ai_deploy.host.release.links import Links
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec
from ai_deploy.host.strategies import front
from ai_deploy.host.strategies.base import Leave, Live, UnitFile, is_active, remove_unit_file
from ai_deploy.host.strategies.inplace import go_live_in_place

name = "restart"
keeps_serving = False  # one copy: out of service from its stop until it is ready


def unit_files(data: Any) -> list[UnitFile]:
    host, port = front.listen(data)
    context = {"socket": False, "host": host, "port": port}
    return [UnitFile("ai-server.service.j2", f"{data.app_name}.service", context)]


def units(layout: Layout) -> list[str]:
    return [layout.service]


def prepare_host(data: Any) -> None:
    front.prepare_host(data)


def boot_units(layout: Layout) -> list[str]:
    return [layout.service]


def is_steady(tree: AppTree, layout: Layout) -> bool:
    active = tree.active_units()
    return (
        layout.service in active
        and layout.socket not in active
        and tree.nginx_site == tree.lb_front
        and (not tree.lb_front or "nginx.service" in active)
    )


def go_live(remote: Remote, spec: Spec, before: Links, leave_others: Leave) -> Live:
    def take_port() -> int:
        if front.must_move(remote, spec):
            # lb_drain turned on or off: the public port changes hands between the service and
            # nginx's front, so the service lets go of it first (it was drained, if at all,
            # by the stop before: an old process on the public port has no front to drain).
            remote.run(f"systemctl stop {shlex.quote(spec.service)}")
        leave_others()
        front.take(remote, spec)
        remote.run(f"systemctl enable {shlex.quote(spec.service)} 2>/dev/null || true")
        return restart_service(remote, spec.service)

    return go_live_in_place(remote, spec, before, take_port, name)


def leave(remote: Remote, spec: Spec, keep: set[str]) -> bool:
    layout = spec.layout
    present = remote.run(f"test -e {shlex.quote(layout.unit_file(layout.service))}").ok
    if not (present or is_active(remote, layout.service)):
        return False
    remote.run(f"systemctl disable --now {shlex.quote(layout.service)} 2>/dev/null; true")
    if layout.service not in keep:
        remove_unit_file(remote, layout, layout.service)
    return True
