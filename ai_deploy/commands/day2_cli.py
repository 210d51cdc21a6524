"""The argparse wiring of the day-2 verbs `logs`, `releases`, `audit`, `exec`, `restart` and
`cache clear` (cli.py adds them to its parser), each calling its own module under
ai_deploy/commands/."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ai_deploy.commands.verbosity import add_verbose


def _cmd_logs(args: argparse.Namespace) -> int:
    from ai_deploy.commands.logs import show_logs

    return show_logs(
        args.inventory,
        follow=args.follow,
        lines=args.lines,
        since=args.since,
        grep=args.grep,
        error=args.error,
    )


def _cmd_releases(args: argparse.Namespace) -> int:
    from ai_deploy.commands.releases import show_releases

    return show_releases(args.inventory, args.json)


def _cmd_audit(args: argparse.Namespace) -> int:
    from ai_deploy.commands.audit import show_audit

    return show_audit(args.inventory, args.lines)


def _cmd_exec(args: argparse.Namespace) -> int:
    from ai_deploy.commands.exec import run_exec

    return run_exec(args.inventory, args.cmd)


def _cmd_restart(args: argparse.Namespace) -> int:
    from ai_deploy.commands.restart import restart

    return restart(args.inventory)


def _cmd_cache_clear(args: argparse.Namespace) -> int:
    from ai_deploy.commands.cache import clear_cache

    return clear_cache(args.inventory)


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_day2_verbs(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_inventory: Callable[[argparse.ArgumentParser], None],
) -> None:
    """logs, releases, audit, exec, restart and cache, each with the inventory options
    ADD_INVENTORY gives and `day2=True` (so that cli.main reaches a GCP instance for them as
    for status)."""
    logs = sub.add_parser(
        "logs",
        help="the service's log (app_log_dir/APP.log, or APP-error.log with --error), "
        "each line as HOST | line",
        description="Print the last lines of the service's log on each host, prefixed with "
        "the host's name; -f keeps printing new lines until Ctrl-C.",
    )
    add_inventory(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="print new lines as they come")
    logs.add_argument(
        "--lines",
        "-n",
        type=_positive,
        metavar="N",
        help="how many lines per host (default 50; all of them since TIME with --since)",
    )
    logs.add_argument(
        "--since",
        metavar="TIME",
        help="lines stamped at or after TIME: 10m, 2h, 1d, 22:10, 2026-11-29 22:10 (lines "
        "need a leading time stamp; unstamped ones go with the line before them)",
    )
    logs.add_argument("--grep", metavar="PATTERN", help="only lines matching this Python regex")
    logs.add_argument("--error", action="store_true", help="the error log (the app's stderr)")
    logs.set_defaults(func=_cmd_logs, day2=True)

    releases = sub.add_parser(
        "releases",
        help="releases kept on each host: when and by whom each went into service, outcome, "
        "size, current and previous",
    )
    add_inventory(releases)
    releases.add_argument("--json", action="store_true", help="a JSON list, one object per host")
    releases.set_defaults(func=_cmd_releases, day2=True)

    audit = sub.add_parser(
        "audit", help="revisions.log of every host merged, newest first, host named"
    )
    add_inventory(audit)
    audit.add_argument(
        "--lines", "-n", type=_positive, default=20, metavar="N", help="entries (default 20)"
    )
    audit.set_defaults(func=_cmd_audit, day2=True)

    exec_ = sub.add_parser(
        "exec",
        help="run CMD in the current release as the service user, with its .env, cache "
        "variables and venv",
        description="Run CMD on each host in the current release's directory, as app_user, "
        "with the .env the service reads, its HOME and cache variables (the cache directory), "
        "VIRTUAL_ENV set, the venv first on PATH and the app's own package importable as the "
        "service imports it (PYTHONPATH: the release, then its src/; a transient systemd unit). "
        "Output is prefixed HOST | when there are several hosts; the exit status is the first "
        "failing host's (0 when all succeed).",
        usage="ai-deploy exec [-h] [-i INV] -- CMD...",
    )
    add_inventory(exec_)
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD", help="after --")
    exec_.set_defaults(func=_cmd_exec, day2=True)

    restart = sub.add_parser(
        "restart",
        help="restart the current release behind the health gate, one host at a time",
        description="Restart the service on each host in turn through the deploy's gate "
        "(lock, restart, health check, a `restart` line in revisions.log). A host that does "
        "not come back healthy stops the run; exit codes as for deploy (14, 15, 16).",
    )
    add_inventory(restart)
    add_verbose(restart, "each step of the health gate, not only each host's verdict")
    restart.set_defaults(func=_cmd_restart, day2=True)

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
    clear.set_defaults(func=_cmd_cache_clear, day2=True)
