"""`ai-deploy sandbox up|list|down|lb`: throw-away local systemd hosts, and a load balancer
(HAProxy) in front of some of them."""

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
    from ai_deploy.sandbox import balancer

    lb = balancer.running()
    if lb is not None and (everything or {b.name for b in lb.backends} <= set(removed)):
        balancer.stop()
        print(f"stopped the sandbox load balancer at {lb.url}")
    return 0


def lb_up(names: list[str], check: Any, port: int | None, app_port: int) -> int:
    from ai_deploy.sandbox import balancer, hosts
    from ai_deploy.sandbox.lb import Backend, LoadBalancerError

    known = {h.name: h for h in hosts.list_hosts()}
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        what = f"no sandbox host named {unknown[0]}" if unknown else "name the hosts behind it"
        print(f"{what}; there are: {', '.join(sorted(known)) or 'none'}", file=sys.stderr)
        return 2
    try:
        lb = balancer.start([Backend(n, known[n].address, app_port) for n in names], check, port)
    except (LoadBalancerError, ValueError) as exc:
        print(f"ai-deploy sandbox lb: {exc}", file=sys.stderr)
        return 1
    print(
        f"load balancer (HAProxy) at {lb.url} in front of {', '.join(names)}: GET "
        f"{check.path} on port {check.port} every {check.interval_s:g} s, {check.threshold} "
        "in a row to take a host out or put it back; no retry, no redispatch\n"
        "the hosts answer it when deployed with lb_drain = true; `ai-deploy sandbox lb "
        "--status` shows each host's state, `--down` stops it",
        file=sys.stderr,
    )
    print(lb.url)
    return 0


def lb_status() -> int:
    from ai_deploy.sandbox import balancer
    from ai_deploy.sandbox.lb import LoadBalancerError

    lb = balancer.running()
    if lb is None:
        print("no sandbox load balancer is running", file=sys.stderr)
        return 1
    try:
        states = {s.name: s for s in lb.states()}
    except LoadBalancerError as exc:
        print(f"ai-deploy sandbox lb: {exc}", file=sys.stderr)
        return 1
    c = lb.check
    print(
        f"{lb.url}: GET {c.path} on port {c.port} every {c.interval_s:g} s, {c.threshold} in a row"
    )
    print(f"{'NAME':<20} {'ADDRESS':<15} {'STATE':<22} OPEN")
    for b in lb.backends:
        s = states.get(b.name)
        state = (
            "unknown" if s is None else ("in service" if s.in_service else "out") + f" ({s.status})"
        )
        print(f"{b.name:<20} {b.address:<15} {state:<22} {'-' if s is None else s.sessions}")
    return 0


def lb_down() -> int:
    from ai_deploy.sandbox import balancer

    lb = balancer.stop()
    print(f"stopped the sandbox load balancer at {lb.url}" if lb else "no sandbox load balancer")
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
    lb = sandbox_sub.add_parser(
        "lb",
        help="a load balancer (HAProxy) in front of sandbox hosts, checking them as a GCP "
        "backend service does; prints its URL",
    )
    lb.add_argument("names", nargs="*", metavar="NAME", help="the sandbox hosts behind it")
    lb.add_argument("--port", type=int, help="its port on 127.0.0.1 (default: a free one)")
    lb.add_argument("--app-port", type=int, default=8000, help="where requests go (default 8000)")
    lb.add_argument("--health-path", default="/lb-health", help="(default /lb-health)")
    lb.add_argument("--health-port", type=int, default=8000, help="(default 8000)")
    lb.add_argument(
        "--interval", type=float, default=5.0, help="seconds between checks (default 5)"
    )
    lb.add_argument("--threshold", type=int, default=2, help="checks in a row (default 2)")
    lb.add_argument("--status", action="store_true", help="each host's state, as it sees them")
    lb.add_argument("--down", action="store_true", help="stop it")
    lb.set_defaults(func=_lb)


def _up(args: argparse.Namespace) -> int:
    return up(args.count, args.name)


def _list(args: argparse.Namespace) -> int:
    return list_hosts()


def _down(args: argparse.Namespace) -> int:
    return down(args.names, args.all)


def _lb(args: argparse.Namespace) -> int:
    from ai_deploy.sandbox.lb import HealthCheck

    if args.down or args.status:
        return lb_down() if args.down else lb_status()
    try:
        check = HealthCheck(args.health_path, args.health_port, args.interval, args.threshold)
    except ValueError as exc:
        print(f"ai-deploy sandbox lb: {exc}", file=sys.stderr)
        return 2
    return lb_up(args.names, check, args.port, args.app_port)
