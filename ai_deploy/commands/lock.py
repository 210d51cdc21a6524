"""`ai-deploy lock status|release`: who holds each host's deploy lock; remove a stale one (or,
forced, any), with a line in revisions.log. Also what `ai-deploy deploy` runs after stopping its
pyinfra: the lock that very run held is released, and a drain from the load balancer that its
rollout set is cleared (`python -m ai_deploy.commands.lock`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ai_deploy.commands.options import add_inventory
from ai_deploy.commands.status import layout_of, lock_line
from ai_deploy.host.lbdrain import undrain_script
from ai_deploy.host.release.identity import this_machine
from ai_deploy.host.release.lock import (
    lock_is_stale,
    read_held,
    release_if_held_by,
    remove_if_key,
)
from ai_deploy.host.revisions import append_revision
from ai_deploy.host.safetext import safe_line
from ai_deploy.host.settings import Spec, deploy_who
from ai_deploy.inventory import connected, connected_partly


def lock_command(inventory: str | None, action: str, force: bool = False) -> int:
    from ai_deploy.host.facts import read_tree  # pyinfra: not for building the parser

    rc = 0
    with connected(inventory) as hosts:
        for h in hosts:
            layout = layout_of(h)
            tree = read_tree(h, layout)
            print(f"{h.name}: {safe_line(lock_line(tree))}")  # the holder is the host's text
            if action != "release" or (tree.lock is None and tree.lock_raw is None):
                continue
            held = read_held(h, layout)
            if held is None:
                print(f"{h.name}: the lock is gone already")
                continue
            stale = lock_is_stale(held.info, held.lease_age_s, Spec.from_data(h.data))
            if not stale and not force:
                print(
                    f"{h.name}: the holder may still be running; release anyway with --force "
                    "once you are sure it is gone"
                )
                rc = 1
                continue
            # Only the lock just judged: one renewed or taken over meanwhile is left alone.
            if not remove_if_key(h, layout, held.key):
                print(
                    f"{h.name}: the lock changed while it was read (renewed or taken over); "
                    "left as it is"
                )
                rc = 1
                continue
            reason = stale or "forced"
            print(f"{h.name}: lock released ({safe_line(reason)})")
            info = json.dumps(tree.lock) if tree.lock else tree.lock_raw
            append_revision(
                h,
                layout,
                "lock-release",
                "-",
                "ok",
                deploy_who(),
                f"reason={reason!r} holder={info}",
            )
    return rc


def release_held_by(inventory: str, items: list[str], deployer: str, pid: int) -> int:
    """Remove each host's lock if it is held by exactly the deploy PID of this machine (a
    pyinfra run, named DEPLOYER, that was stopped before its gate could release it); any other
    holder's lock is left alone, another pid's or another machine's with the same name too.
    Under a rollout (ITEMS' rollout_lock_token), a host that rollout drained from its load
    balancer is put back (its lb_health_path answers as its app's health again)."""
    from pyinfra_cli.util import parse_cli_arg

    data = {k: parse_cli_arg(v) for k, _, v in (item.partition("=") for item in items)}
    token = str(data.get("rollout_lock_token") or "")
    with connected_partly(inventory, data) as reached:  # each host it can reach
        for h in reached.hosts:
            layout = layout_of(h)
            if token and h.run(undrain_script(layout.lb_drained, token)).stdout[:1] == [
                "UNDRAINED"
            ]:
                print(
                    f"{h.name}: the stopped deploy had drained it from the load balancer: "
                    "cleared (it is sent traffic again once its app answers healthy)"
                )
            if release_if_held_by(h, layout, pid, this_machine()):
                detail = f"reason='deploy stopped' holder={deployer!r} pid={pid}"
                append_revision(h, layout, "lock-release", "-", "ok", deploy_who(), detail)
                print(f"{h.name}: released the lock the stopped deploy held")
    return 0


if __name__ == "__main__":
    # python -m ai_deploy.commands.lock INVENTORY DEPLOYER PID [KEY=VALUE ...]
    sys.exit(release_held_by(sys.argv[1], sys.argv[4:], sys.argv[2], int(sys.argv[3])))


def add_parser(sub: Any) -> None:
    lock = sub.add_parser("lock", help="the per-host deploy lock")
    lock_sub = lock.add_subparsers(dest="lock_command", metavar="ACTION", required=True)
    status = lock_sub.add_parser("status", help="who holds the lock on each host")
    add_inventory(status)
    status.set_defaults(func=_run, day2=True)
    release = lock_sub.add_parser(
        "release", help="remove a stale lock (a dead or expired deploy); --force for any"
    )
    add_inventory(release)
    release.add_argument("--force", action="store_true", help="remove a live holder's lock")
    release.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return lock_command(args.inventory, args.lock_command, force=getattr(args, "force", False))
