"""socket: ai-server.socket owns the public port and ai-server.service takes it
(`uvicorn --fd 3`); during a restart connections wait in the kernel's backlog instead of being
refused (they wait for the new process to load its model). With lb_drain the socket is on loopback
behind nginx's lb front (ai_deploy.host.strategies.front)."""

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
from ai_deploy.host.strategies.base import (
    Leave,
    Live,
    UnitFile,
    is_active,
    must,
    remove_unit_file,
)
from ai_deploy.host.strategies.inplace import go_live_in_place

name = "socket"
keeps_serving = False  # one copy: requests wait in the socket while it starts


def unit_files(data: Any) -> list[UnitFile]:
    host, port = front.listen(data)
    return [
        UnitFile("ai-server.service.j2", f"{data.app_name}.service", {"socket": True}),
        UnitFile(
            "ai-server.socket.j2",
            f"{data.app_name}.socket",
            {"listen": f"{host}:{port}", "backlog": data.socket_backlog},
        ),
    ]


def units(layout: Layout) -> list[str]:
    return [layout.service, layout.socket]


def prepare_host(data: Any) -> None:
    front.prepare_host(data)


def boot_units(layout: Layout) -> list[str]:
    # The socket is enabled when a release is in service: an enabled socket on a host with no
    # release would accept connections nothing answers.
    return []


def is_steady(tree: AppTree, layout: Layout) -> bool:
    active = tree.active_units()
    return (
        layout.service in active
        and layout.socket in active
        and tree.nginx_site == tree.lb_front
        and (not tree.lb_front or "nginx.service" in active)
    )


def go_live(remote: Remote, spec: Spec, before: Links, leave_others: Leave) -> Live:
    layout = spec.layout
    service, sock = shlex.quote(layout.service), shlex.quote(layout.socket)

    def take_port() -> int:
        # The port may be held by the service itself (restart) or by nginx (bluegreen); with
        # lb_drain turned on or off, the socket moves between it and loopback behind the front.
        moving = front.must_move(remote, spec)
        if moving or not is_active(remote, layout.socket):
            remote.run(f"systemctl stop {service}")
            if moving:
                remote.run(f"systemctl stop {sock}")
            leave_others()
            front.take(remote, spec)
            must(remote, f"systemctl enable --now {sock}", f"starting {layout.socket}")
            remote.say(f"{layout.socket} holds the port now")
        elif spec.lb_drain:
            front.take(remote, spec)  # its site may have changed: a graceful reload
        remote.run(f"systemctl disable {service} 2>/dev/null || true")
        return restart_service(remote, layout.service)

    return go_live_in_place(remote, spec, before, take_port, name)


def leave(remote: Remote, spec: Spec, keep: set[str]) -> bool:
    layout = spec.layout
    sock = shlex.quote(layout.socket)
    present = remote.run(f"test -e {shlex.quote(layout.unit_file(layout.socket))}").ok
    if not (present or is_active(remote, layout.socket)):
        return False
    remote.run(
        f"systemctl stop {shlex.quote(layout.service)}; systemctl disable --now {sock}; true"
    )
    if layout.socket not in keep:
        remove_unit_file(remote, layout, layout.socket)
    return True
