"""`ai-deploy sandbox up|list|down`: throw-away local systemd hosts."""

from __future__ import annotations

import sys


def up(count: int, name: str | None) -> int:
    from ai_deploy.sandbox import hosts

    started, inventory = hosts.up(count=count, name=name)
    for h in started:
        print(f"sandbox host {h.name} ready at {h.address}", file=sys.stderr)
    print(inventory)
    return 0


def list_hosts() -> int:
    from ai_deploy.sandbox import hosts

    found = hosts.list_hosts()
    if not found:
        print("no sandbox hosts", file=sys.stderr)
        return 0
    print(f"{'NAME':<20} {'ADDRESS':<15} {'STATE':<8} INVENTORY")
    for h in found:
        state = "running" if h.running else "stopped"
        print(f"{h.name:<20} {h.address:<15} {state:<8} {h.inventory}")
    return 0


def down(names: list[str], everything: bool) -> int:
    from ai_deploy.sandbox import hosts

    if not everything and not names:
        print("name the hosts to remove, or pass --all", file=sys.stderr)
        return 2
    removed = hosts.down(None if everything else names)
    print(f"removed {len(removed)} sandbox host(s){': ' + ', '.join(removed) if removed else ''}")
    return 0
