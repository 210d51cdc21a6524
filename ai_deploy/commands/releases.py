"""`ai-deploy releases [--json]`: per host, the releases kept on it, newest first, each with
when it last went into service and by whom (from revisions.log), the outcome, its size on disk,
which one is current and previous, and its model files (name, version, size, verified)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from ai_deploy.commands.options import add_inventory
from ai_deploy.commands.sizes import human_size
from ai_deploy.commands.status import layout_of
from ai_deploy.commands.when import parse_iso, when_text
from ai_deploy.host.paths import Layout
from ai_deploy.host.release.models import models_script, parse_models
from ai_deploy.host.revisions import Revision, parse_revisions, revisions_script
from ai_deploy.host.safetext import safe_text
from ai_deploy.inventory import connected_partly

MARK = "AI-DEPLOY-RELEASE"
_ACTIONS = ("deploy", "rollback", "restart")  # the lines that put a release in service


@dataclass(frozen=True)
class Kept:
    """One release directory as the host reports it."""

    release: str
    size_kb: int
    mtime: float
    healthy: bool


@dataclass(frozen=True)
class ReleaseRow:
    release: str
    current: bool
    previous: bool
    healthy: bool  # passed the health gate
    size_bytes: int
    when: str | None  # UTC ISO time of its last revisions.log line (else the directory's)
    epoch: float | None
    action: str | None  # that line's action and outcome; None: not in revisions.log
    outcome: str | None
    who: str | None
    models: tuple[dict[str, Any], ...] = ()  # name, version, size_bytes, verified


def list_script(layout: Layout) -> str:
    """Shell printing current, previous, then one line per kept release (newest first): id,
    size in KiB (without the shared venv it links to), mtime, and whether it passed the gate."""
    r = layout.root
    return f"""
echo "{MARK} current $(basename "$(readlink {r}/current 2>/dev/null)" 2>/dev/null)"
echo "{MARK} previous $(basename "$(readlink {r}/previous 2>/dev/null)" 2>/dev/null)"
cd {layout.releases} 2>/dev/null || exit 0
ls -1t | while read -r id; do
  case "$id" in .*) continue ;; esac
  [ -d "$id" ] || continue
  h=no; [ -f {r}/healthy/"$id" ] && h=yes
  echo "{MARK} release $id $(du -sk -- "$id" | cut -f1) $(stat -c %Y -- "$id") $h"
done
"""


def parse_list(lines: list[str]) -> tuple[str | None, str | None, list[Kept]]:
    current = previous = None
    kept: list[Kept] = []
    for line in lines:
        if not line.startswith(f"{MARK} "):
            continue
        kind, _, rest = line[len(MARK) + 1 :].partition(" ")
        if kind == "current":
            current = rest.strip() or None
        elif kind == "previous":
            previous = rest.strip() or None
        elif kind == "release":
            parts = rest.split()
            if len(parts) == 4 and parts[1].isdigit():
                kept.append(Kept(parts[0], int(parts[1]), float(parts[2]), parts[3] == "yes"))
    return current, previous, kept


def rows(
    current: str | None,
    previous: str | None,
    kept: list[Kept],
    revisions: list[Revision],
    models: dict[str, tuple[dict[str, Any], ...]] | None = None,
) -> list[ReleaseRow]:
    """KEPT joined with the last revisions.log line that put each release in service."""
    last: dict[str, Revision] = {}
    for rev in revisions:
        if rev.action in _ACTIONS:
            last[rev.release] = rev
    out = []
    for k in kept:
        rev = last.get(k.release)
        epoch = parse_iso(rev.when) if rev else k.mtime
        when = rev.when if rev else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.mtime))
        out.append(
            ReleaseRow(
                release=k.release,
                current=k.release == current,
                previous=k.release == previous,
                healthy=k.healthy,
                size_bytes=k.size_kb * 1024,
                when=when,
                epoch=epoch,
                action=rev.action if rev else None,
                outcome=rev.outcome if rev else None,
                who=rev.who if rev else None,
                models=(models or {}).get(k.release, ()),
            )
        )
    return out


def render(host: str, table: list[ReleaseRow], now: float | None = None) -> list[str]:
    lines = [host]
    if not table:
        return [*lines, "  (no releases)"]
    width = max(len(r.release) for r in table)
    for r in table:
        mark = "current " if r.current else "previous" if r.previous else "        "
        done = f"{r.action} {r.outcome} by {r.who}" if r.action else "not in revisions.log"
        gate = "" if r.healthy else "  (never passed the health gate)"
        lines.append(
            f"  {mark} {r.release:<{width}}  {when_text(r.epoch, now)}  {done}  "
            f"{human_size(r.size_bytes)}{gate}"
        )
        for m in r.models:
            state = "verified" if m["verified"] else "NOT verified: fetched again on deploy"
            lines.append(
                f"  {'':8} {'':<{width}}  model {m['name']} {m['version']}, "
                f"{human_size(m['size_bytes'])}, {state}"
            )
    return lines


def show_releases(inventory: str | None, as_json: bool = False) -> int:
    report: list[dict[str, Any]] = []
    rc = 0
    with connected_partly(inventory) as reached:
        for h in reached.hosts:
            layout = layout_of(h)
            current, previous, kept = parse_list(h.run(list_script(layout)).stdout)
            log = h.run(revisions_script(layout)).stdout
            models = parse_models(h.run(models_script(layout)).stdout)
            table = rows(current, previous, kept, parse_revisions(log), models)
            if as_json:
                report.append({"host": h.name, "releases": [asdict(r) for r in table]})
            else:
                print(safe_text("\n".join(render(h.name, table))))
        for name, reason in reached.unreachable.items():
            rc = 1
            if as_json:
                report.append({"host": name, "error": f"unreachable: {reason}"})
            else:
                print(f"{name}\n  unreachable: {reason}")
    if as_json:
        print(json.dumps(report, indent=2))
    return rc


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "releases",
        help="releases kept on each host: when and by whom each went into service, outcome, "
        "size, current and previous",
    )
    add_inventory(parser)
    parser.add_argument("--json", action="store_true", help="a JSON list, one object per host")
    parser.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return show_releases(args.inventory, args.json)
