"""revisions.log: every line written by `append_revision` (in paths.revisions_line's form,
`WHEN ACTION RELEASE OUTCOME by=WHO [DETAIL]`), and read back as data for the release and audit
reports."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any

from ai_deploy.host.paths import Layout, revisions_line
from ai_deploy.host.release.lock import now_iso
from ai_deploy.host.remote import Remote


def append_revision(
    remote: Remote,
    layout: Layout,
    action: str,
    release: str,
    outcome: str,
    who: str,
    detail: str = "",
) -> None:
    """Add one line, stamped now (UTC), to the end of LAYOUT's revisions.log on REMOTE."""
    line = revisions_line(now_iso(), action, release, outcome, who, detail)
    remote.run(f"printf '%s\\n' {shlex.quote(line)} >> {layout.revisions}")


@dataclass(frozen=True)
class Revision:
    when: str  # as written: UTC, ISO 8601 ("2026-11-29T22:10:05Z")
    action: str  # deploy | rollback | restart | lock-release
    release: str  # "-" when none (a lock release)
    outcome: str  # ok | failed
    who: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_revision(line: str) -> Revision | None:
    """LINE as a Revision; None for a line that is not one (blank, cut short, hand-written)."""
    parts = line.strip().split(" ", 5)
    if len(parts) < 5 or not parts[4].startswith("by="):
        return None
    when, action, release, outcome, who = parts[:5]
    return Revision(when, action, release, outcome, who[3:], parts[5] if len(parts) > 5 else "")


def parse_revisions(lines: list[str]) -> list[Revision]:
    """The Revisions among LINES, in file order (oldest first)."""
    return [r for r in (parse_revision(line) for line in lines) if r is not None]


def revisions_script(layout: Layout, lines: int | None = None) -> str:
    """Shell printing the last LINES lines of revisions.log (all of it with None)."""
    if lines is None:
        return f"cat {layout.revisions} 2>/dev/null || true"
    return f"tail -n {int(lines)} {layout.revisions} 2>/dev/null || true"
