"""What the one-host benchmark reports, pure: one measured run, the medians per tool and kind of
run, the after/before ratios, the breakdown tables and the Markdown report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from bench.metrics import format_ratio, ratio
from bench.onehost_parse import PARTS

TOOLS = ("before", "after")
KINDS = {
    "code": "code deploy: `ai-deploy deploy -v --no-gcp --host ADDRESS --artifact NEW`",
    "noop": "no-op redeploy: the same command and artifact again",
    "pyinfra": "the same code deploy as a plain `pyinfra -y INVENTORY deploy.py`",
}
ISSUE_S = {"code": 9.7, "noop": 5.5, "pyinfra": 7.0}  # the issue's numbers, before the change


@dataclass
class Run:
    """One measured run: TOOL before/after, ROUND from 1, KIND a key of KINDS; OK when it
    exited 0 and the host showed what it should (WHY says what it showed when not)."""

    tool: str
    round: int
    kind: str
    rc: int
    wall_s: float
    ok: bool
    why: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    parts: dict[str, float | None] = field(default_factory=dict)
    log: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def good(runs: Sequence[Run], tool: str, kind: str) -> list[Run]:
    return [r for r in runs if r.tool == tool and r.kind == kind and r.ok]


def wall_median(runs: Sequence[Run], tool: str, kind: str) -> float | None:
    return median([r.wall_s for r in good(runs, tool, kind)])


def part_median(runs: Sequence[Run], tool: str, kind: str, part: str) -> float | None:
    values = [r.parts[part] for r in good(runs, tool, kind) if r.parts.get(part) is not None]
    return median([v for v in values if v is not None])


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def walls_table(runs: Sequence[Run]) -> str:
    rows = [
        "| Run | before: median s (runs) | after: median s (runs) | after/before | issue: before |",
        "|---|---|---|---|---|",
    ]
    for kind, title in KINDS.items():
        cells = []
        for tool in TOOLS:
            each = ", ".join(f"{r.wall_s:.2f}" for r in good(runs, tool, kind)) or "none"
            cells.append(f"{_s(wall_median(runs, tool, kind))} ({each})")
        r = ratio(wall_median(runs, "after", kind), wall_median(runs, "before", kind))
        rows.append(f"| {title} | {cells[0]} | {cells[1]} | {format_ratio(r)} | {ISSUE_S[kind]} |")
    return "\n".join(rows)


def breakdown_table(runs: Sequence[Run], kind: str) -> str:
    rows = ["| Part | before: median s | after: median s | after - before |", "|---|---|---|---|"]
    for part in PARTS:
        b, a = (part_median(runs, tool, kind, part) for tool in TOOLS)
        diff = "-" if a is None or b is None else f"{a - b:+.2f}"
        rows.append(f"| {part} | {_s(b)} | {_s(a)} | {diff} |")
    b, a = (wall_median(runs, tool, kind) for tool in TOOLS)
    diff = "-" if a is None or b is None else f"{a - b:+.2f}"
    rows.append(f"| **wall (median of runs)** | {_s(b)} | {_s(a)} | {diff} |")
    return "\n".join(rows)


def runs_table(runs: Sequence[Run]) -> str:
    rows = [
        "| Round | Tool | Run | Exit | Wall s | Checked | Log |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        checked = "ok" if r.ok else f"**not ok**: {r.why}"
        rows.append(
            f"| {r.round} | {r.tool} | {r.kind} | {r.rc} | {r.wall_s:.2f} | {checked} | {r.log} |"
        )
    return "\n".join(rows)


def render_markdown(
    info: Sequence[tuple[str, str]], runs: Sequence[Run], how: str, notes: Sequence[str]
) -> str:
    lines = ["# One host: a single-target deploy, before and after, side by side", ""]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info), ""]
    lines += ["## Wall time", "", walls_table(runs), ""]
    lines += [
        "Medians of the runs that exited 0 and left the host as expected; after/before above "
        "1.00x means the working tree's tool is slower.",
        "",
    ]
    for kind, title in KINDS.items():
        lines += [f"## Where the seconds go: {title}", "", breakdown_table(runs, kind), ""]
    lines += ["## How each part is measured", "", how.strip(), ""]
    lines += ["## Every run, in order", "", runs_table(runs), ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)
