"""`ai-deploy audit [--lines N]`: the revisions.log entries of every host in one list, newest
first, each naming its host: who deployed, rolled back, restarted or released a lock, when."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from ai_deploy.commands.options import add_inventory, non_negative
from ai_deploy.commands.status import layout_of
from ai_deploy.commands.when import parse_iso, when_text
from ai_deploy.host.revisions import Revision, parse_revisions, revisions_script
from ai_deploy.host.safetext import safe_text
from ai_deploy.inventory import connected_partly

DEFAULT_LINES = 20


@dataclass(frozen=True)
class Entry:
    host: str
    revision: Revision

    @property
    def epoch(self) -> float:
        return parse_iso(self.revision.when) or 0.0


def merged(by_host: dict[str, list[Revision]], last: int) -> list[Entry]:
    """Every host's entries in one list, newest first (a host's own order breaks ties), the
    first LAST of them."""
    entries = []
    for host, revisions in by_host.items():
        for n, rev in enumerate(revisions):
            entries.append((Entry(host, rev), n))
    entries.sort(key=lambda item: (item[0].epoch, item[1]), reverse=True)
    return [entry for entry, _ in entries[: max(last, 0)]]


def render(entries: list[Entry], now: float | None = None) -> list[str]:
    if not entries:
        return ["(no entries in revisions.log)"]
    host_w = max(len(e.host) for e in entries)
    action_w = max(len(e.revision.action) for e in entries)
    release_w = max(len(e.revision.release) for e in entries)
    whens = [when_text(parse_iso(e.revision.when), now) for e in entries]
    when_w = max(len(w) for w in whens)
    lines = []
    for e, when in zip(entries, whens, strict=True):
        r = e.revision
        detail = f"  {r.detail}" if r.detail else ""
        lines.append(
            f"{when:<{when_w}}  {e.host:<{host_w}}  {r.action:<{action_w}}  "
            f"{r.release:<{release_w}}  {r.outcome:<6}  by {r.who}{detail}"
        )
    return lines


def show_audit(inventory: str | None, lines: int = DEFAULT_LINES) -> int:
    rc = 0
    with connected_partly(inventory) as reached:
        by_host = {
            h.name: parse_revisions(h.run(revisions_script(layout_of(h), lines)).stdout)
            for h in reached.hosts
        }
        for name, reason in reached.unreachable.items():
            print(f"{name}: unreachable, not listed: {reason}", file=sys.stderr)
            rc = 1
    print(safe_text("\n".join(render(merged(by_host, lines)))))
    return rc


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "audit", help="revisions.log of every host merged, newest first, host named"
    )
    add_inventory(parser)
    parser.add_argument(
        "--lines", "-n", type=non_negative, default=20, metavar="N", help="entries (default 20)"
    )
    parser.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return show_audit(args.inventory, args.lines)
