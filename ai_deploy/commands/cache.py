"""`ai-deploy cache clear`: empty the service's cache directory (app_cache_dir, by default
<app_root>/cache) on each host, under the host's deploy lock, saying what was removed (each
entry two levels deep with its size, and the bytes freed) and recording a `cache-clear` line in
revisions.log. The directory itself stays, with its owner and mode; the running service keeps
what it has loaded and fills the cache again as it goes (`ai-deploy restart` starts it on the
empty cache). A host whose lock is held by a deploy is left alone."""

from __future__ import annotations

import argparse
from typing import Any

from ai_deploy.commands.hostlines import HostLines, PrintedRemote
from ai_deploy.commands.options import add_inventory
from ai_deploy.commands.sizes import human_size
from ai_deploy.commands.status import layout_of
from ai_deploy.host.cache import (
    Cleared,
    cache_problems,
    clear_script,
    parse_cleared,
    parse_state,
    state_script,
)
from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.release.journal import record
from ai_deploy.host.release.lock import acquire_lock, release_lock
from ai_deploy.host.settings import Spec
from ai_deploy.inventory import connected

ACTION = "cache-clear"  # the lock's action and the revisions.log line's
NOTHING = Cleared(present=False, removed=[], freed_bytes=0, left=0, errors=[])


def clear_lines(path: str, cleared: Cleared) -> list[str]:
    """What `cache clear` says about one host's CLEARED cache at PATH."""
    if not cleared.present:
        return [f"{path} does not exist (the next deploy makes it): nothing removed"]
    if not cleared.removed:
        return [f"{path} was empty: nothing removed"]
    lines = [
        f"cleared {path}: removed {len(cleared.removed)} entries, "
        f"{human_size(cleared.freed_bytes)} freed"
    ]
    width = max(len(rel) for rel, _ in cleared.removed)
    lines += [f"  {rel:<{width}}  {human_size(size)}" for rel, size in cleared.removed]
    return lines


def clear_host(remote: PrintedRemote, out: HostLines) -> int:
    """Empty REMOTE's cache under its deploy lock: 0, 2 for bad cache settings, 1 when its
    lock is held or entries were left (each said on stderr)."""
    d, layout = remote.data, layout_of(remote)
    problems = cache_problems(layout, d.app_data_dirs, d.app_cache_env)
    if problems:
        for problem in problems:
            out.err(remote.name, problem)
        return 2
    if not parse_state(layout, remote.run(state_script(layout)).stdout).present:
        # Nothing to clear, and no lock taken (which would make app_root on a fresh host).
        out.out(remote.name, clear_lines(layout.cache_dir, NOTHING)[0])
        return 0
    spec = Spec.from_data(d, action=ACTION, release_id="-")
    try:
        token = acquire_lock(remote, spec)
    except DeployFailed as exc:
        out.err(remote.name, f"cache not cleared: {exc}")
        return 1
    try:
        cleared = parse_cleared(layout, remote.run(clear_script(layout)).stdout)
        if cleared.present:
            outcome = "ok" if not (cleared.left or cleared.errors) else "failed"
            record(
                remote,
                spec,
                outcome,
                f"removed={len(cleared.removed)} freed_bytes={cleared.freed_bytes} "
                f"left={cleared.left}",
            )
    finally:
        release_lock(remote, spec, token)
    for line in clear_lines(layout.cache_dir, cleared):
        out.out(remote.name, line)
    for error in cleared.errors:
        out.err(remote.name, error)
    if cleared.left:
        out.err(remote.name, f"{cleared.left} entries could not be removed (see above)")
        return 1
    return 0


def clear_cache(inventory: str | None) -> int:
    """`ai-deploy cache clear` over the inventory's hosts: the first non-zero status (2: bad
    settings, 1: a lock held or entries left), else 0."""
    codes: list[int] = []
    with connected(inventory) as hosts:
        out = HostLines([h.name for h in hosts])
        for h in hosts:
            codes.append(clear_host(PrintedRemote(h.host, out), out))
    if codes and not any(codes):
        print(
            "The running service keeps what it has loaded; `ai-deploy restart` starts it on "
            "the empty cache."
        )
    return next((c for c in codes if c), 0)


def add_parser(sub: Any) -> None:
    cache = sub.add_parser(
        "cache", help="the service's persistent cache directory (its HOME, HF_HOME, ...)"
    )
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    clear = cache_sub.add_parser(
        "clear",
        help="empty the cache directory on each host, under the deploy lock",
        description="Empty the service's cache directory (app_cache_dir, default "
        "APP_ROOT/cache) on each host under its deploy lock, keeping the directory, and print "
        "what was removed (entries two levels deep with their sizes) and the space freed; a "
        "cache-clear line goes into revisions.log. The running service keeps what it has "
        "loaded. Exit 1 when a host's lock is held or something could not be removed, 2 for "
        "bad cache settings.",
    )
    add_inventory(clear)
    clear.set_defaults(func=_run_clear, day2=True)


def _run_clear(args: argparse.Namespace) -> int:
    return clear_cache(args.inventory)
