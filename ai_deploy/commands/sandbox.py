"""`ai-deploy sandbox up|list|down`: throw-away local systemd hosts."""

from __future__ import annotations

import argparse
import sys
from typing import Any


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


def add_parser(sub: Any) -> None:
    sandbox = sub.add_parser("sandbox", help="throw-away local systemd hosts (root)")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    up_ = sandbox_sub.add_parser(
        "up", help="boot fresh hosts; prints the path of a pyinfra inventory for them"
    )
    up_.add_argument("--count", type=int, default=1, help="how many hosts (default 1)")
    up_.add_argument("--name", help="host name (NAME-1..N with --count > 1)")
    up_.set_defaults(func=_up)
    ls = sandbox_sub.add_parser("list", help="show sandbox hosts")
    ls.set_defaults(func=_list)
    down_ = sandbox_sub.add_parser("down", help="remove hosts and everything they used")
    down_.add_argument("names", nargs="*", metavar="NAME")
    down_.add_argument("--all", action="store_true", help="remove every sandbox host")
    down_.set_defaults(func=_down)


def _up(args: argparse.Namespace) -> int:
    return up(args.count, args.name)


def _list(args: argparse.Namespace) -> int:
    return list_hosts()


def _down(args: argparse.Namespace) -> int:
    return down(args.names, args.all)
