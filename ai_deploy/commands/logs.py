"""`ai-deploy logs [-f] [--lines N] [--since TIME] [--grep PATTERN] [--error]`: the service's log
files (the unit appends stdout to app_log_dir/app_name.log and stderr to
app_name-error.log; blue/green: the live colour's), each line as `HOST | line`."""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from typing import Any

from ai_deploy.commands.hostlines import HostLines
from ai_deploy.commands.logfilter import follows, select
from ai_deploy.commands.options import add_inventory, non_negative
from ai_deploy.commands.status import layout_of
from ai_deploy.commands.when import parse_since
from ai_deploy.host.paths import Layout
from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.host.stream import stream
from ai_deploy.inventory import connected_partly

DEFAULT_LINES = 50
SCAN_LINES = 100_000  # how far back --since and --grep look
MARK = "AI-DEPLOY-LOG"


@dataclass(frozen=True)
class LogRead:
    path: str
    size: int | None  # bytes read up to; None: no such file
    lines: list[str]


def read_script(layout: Layout, *, error: bool, scan: int) -> str:
    """Shell that names the log file and its size, then prints its last SCAN lines up to that
    size (so a follow can start exactly where this read ended)."""
    suffix = "-error" if error else ""
    plain = shlex.quote(f"{layout.log_dir}/{layout.app_name}{suffix}.log")
    colour_base = shlex.quote(f"{layout.log_dir}/{layout.app_name}-")
    return f"""
f={plain}
if [ -e {shlex.quote(layout.nginx_site)} ] && [ -f {layout.colors}/LIVE ]; then
  f={colour_base}"$(cat {layout.colors}/LIVE)"{suffix}.log
fi
s=$(stat -c %s -- "$f" 2>/dev/null) || s=-
echo "{MARK} $s $f"
if [ "$s" != - ]; then head -c "$s" -- "$f" | tail -n {int(scan)}; fi
"""


def parse_read(lines: list[str]) -> LogRead:
    for i, line in enumerate(lines):
        if line.startswith(f"{MARK} "):
            _, size, path = line.split(" ", 2)
            return LogRead(path, int(size) if size.isdigit() else None, lines[i + 1 :])
    raise ValueError("the log read printed no header")


def follow_script(read: LogRead) -> str:
    """`tail -F` from the first byte the read did not show (log rotation is followed)."""
    return f"tail -c +{(read.size or 0) + 1} -F -- {shlex.quote(read.path)}"


def show_logs(
    inventory: str | None,
    *,
    follow: bool = False,
    lines: int | None = None,
    since: str | None = None,
    grep: str | None = None,
    error: bool = False,
) -> int:
    try:
        since_epoch = parse_since(since) if since else None
        pattern = re.compile(grep) if grep else None
    except (ValueError, re.error) as exc:
        print(f"ai-deploy: error: {exc}", file=sys.stderr)
        return 2
    last = lines if lines is not None else (None if since_epoch else DEFAULT_LINES)
    scan = SCAN_LINES if since_epoch is not None or pattern else (last or DEFAULT_LINES)
    rc = 0
    with connected_partly(inventory) as reached:
        out = HostLines([h.name for h in reached.hosts] + list(reached.unreachable))
        for name, reason in reached.unreachable.items():
            out.err(name, f"unreachable: {reason}")
            rc = 1
        reads: list[tuple[PyinfraRemote, LogRead]] = []
        for h in reached.hosts:
            result = h.run(read_script(layout_of(h), error=error, scan=scan))
            try:
                read = parse_read(result.stdout)
            except ValueError:
                out.err(h.name, f"could not read the log: {' '.join(result.stderr)[-300:]}")
                rc = 1
                continue
            if read.size is None:
                out.err(h.name, f"no log at {read.path} (yet)")
            chosen = select(read.lines, since=since_epoch, pattern=pattern, last=last)
            if chosen.unstamped and read.lines:
                out.err(h.name, f"the lines of {read.path} carry no time stamp: --since shows none")
            for line in chosen.lines:
                out.out(h.name, line)
            reads.append((h, read))
        if follow and reads:
            _follow(reads, out, pattern)
    return rc


def _follow(
    reads: list[tuple[PyinfraRemote, LogRead]], out: HostLines, pattern: re.Pattern[str] | None
) -> None:
    """Print new lines of every host's log as they come, until Ctrl-C (which ends quietly)."""
    import gevent
    import gevent.event

    broken: list[BrokenPipeError] = []

    def one(h: PyinfraRemote, read: LogRead) -> None:
        def line(text: str) -> None:
            if follows(text, pattern):
                out.out(h.name, text)

        try:
            stream(h, follow_script(read), line, lambda t: out.err(h.name, t), until_closed=True)
        except BrokenPipeError as exc:
            broken.append(exc)
        except Exception as exc:  # the connection went: say so, keep following the others
            out.err(h.name, f"stopped following: {exc}")

    followers = [gevent.spawn(one, h, read) for h, read in reads]
    # Ctrl-C sets an event instead of raising in gevent's hub (which would print it).
    stopped = gevent.event.Event()
    on_int = gevent.signal_handler(signal.SIGINT, stopped.set)
    try:
        while not (stopped.is_set() or broken or all(g.dead for g in followers)):
            gevent.joinall(followers, timeout=0.2)
    finally:
        on_int.cancel()
        gevent.killall(followers)
    if broken:
        raise broken[0]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "logs",
        help="the service's log (app_log_dir/APP.log, or APP-error.log with --error), "
        "each line as HOST | line",
        description="Print the last lines of the service's log on each host, prefixed with "
        "the host's name; -f keeps printing new lines until Ctrl-C.",
    )
    add_inventory(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="print new lines as they come")
    parser.add_argument(
        "--lines",
        "-n",
        type=non_negative,
        metavar="N",
        help="how many lines per host (default 50; all of them since TIME with --since)",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="lines stamped at or after TIME: 10m, 2h, 1d, 22:10, 2026-11-29 22:10 (lines "
        "need a leading time stamp; unstamped ones go with the line before them)",
    )
    parser.add_argument("--grep", metavar="PATTERN", help="only lines matching this Python regex")
    parser.add_argument("--error", action="store_true", help="the error log (the app's stderr)")
    parser.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return show_logs(
        args.inventory,
        follow=args.follow,
        lines=args.lines,
        since=args.since,
        grep=args.grep,
        error=args.error,
    )
