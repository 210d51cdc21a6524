"""What the fleet benchmark reports, pure: one result per scenario, the table with each
scenario's wall time and p99 against the single host's (same run), and the acceptance line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.metrics import Summary, format_ratio, ratio

BASELINE = "a"  # the single host: the reference of every ratio
WALL_LIMIT = 1.5  # acceptance: (b) takes at most this times (a)'s wall time ...
ONE_BATCH = "b"  # ... and loses no request


@dataclass
class FleetResult:
    """One measured rollout. SERVES_AFTER: host name -> the variant its /predict answered with
    after the tail ("down" when it did not answer)."""

    key: str
    title: str
    hosts: int
    rollout: str  # the rollout's options, as given to `ai-deploy deploy`
    expect_rc: int
    expect_after: str  # the variant every host should serve at the end
    rc: int | None = None
    wall_s: float | None = None
    summary: Summary | None = None
    serves_after: dict[str, str] = field(default_factory=dict)
    failed_by_host: dict[str, int] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)  # the rollout's "== step: hosts" lines
    error: str | None = None  # why it was not measured

    @property
    def as_expected(self) -> bool:
        return (
            self.error is None
            and self.rc == self.expect_rc
            and bool(self.serves_after)
            and set(self.serves_after.values()) == {self.expect_after}
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "title": self.title,
            "hosts": self.hosts,
            "rollout": self.rollout,
            "exit_code": self.rc,
            "expected_exit_code": self.expect_rc,
            "wall_s": self.wall_s,
            "summary": self.summary.as_dict() if self.summary else None,
            "serves_after": self.serves_after,
            "failed_by_host": self.failed_by_host,
            "expected_after": self.expect_after,
            "as_expected": self.as_expected,
            "steps": self.steps,
            "error": self.error,
        }


def serves_cell(serves: dict[str, str]) -> str:
    """ "base on 4/4", or the count per variant ("base 3/4, down 1/4")."""
    if not serves:
        return "-"
    counts = Counter(serves.values())
    n = len(serves)
    if len(counts) == 1:
        return f"{next(iter(counts))} on {n}/{n}"
    return ", ".join(f"{v} {c}/{n}" for v, c in sorted(counts.items()))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _x(value: float | None, base: float | None, is_base: bool) -> str:
    return "" if is_base else f" ({format_ratio(ratio(value, base))})"


COLUMNS = (
    "Scenario",
    "Hosts",
    "Rollout",
    "Exit (expected)",
    "Wall s (x1 host)",
    "Failed / requests",
    "p50 / p99 steady ms",
    "p50 / p99 during rollout ms (p99 x1 host)",
    "Serves after",
)


def render_table(results: Sequence[FleetResult]) -> str:
    """A Markdown table, one row per scenario; ratios against the single host's row."""
    base = next((r for r in results if r.key == BASELINE and r.summary), None)
    base_wall = base.wall_s if base else None
    base_p99 = base.summary.deploy_p99_ms if base and base.summary else None
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in results:
        title = f"({r.key}) {r.title}"
        if r.summary is None or r.wall_s is None:
            cells = [title, str(r.hosts), f"`{r.rollout}`", r.error or "not measured"]
            cells += ["-"] * (len(COLUMNS) - len(cells))
        else:
            s, is_base = r.summary, r.key == BASELINE
            kinds = ", ".join(f"{k} {n}" for k, n in s.failures_by_status.items())
            cells = [
                title,
                str(r.hosts),
                f"`{r.rollout}`",
                f"{r.rc} ({r.expect_rc})" + ("" if r.rc == r.expect_rc else " UNEXPECTED"),
                f"{r.wall_s:.1f}{_x(r.wall_s, base_wall, is_base)}",
                f"{s.failed} / {s.requests}" + (f" ({kinds})" if kinds else ""),
                f"{_ms(s.steady_p50_ms)} / {_ms(s.steady_p99_ms)}",
                f"{_ms(s.deploy_p50_ms)} / {_ms(s.deploy_p99_ms)}"
                f"{_x(s.deploy_p99_ms, base_p99, is_base)}",
                serves_cell(r.serves_after),
            ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(
    info: Sequence[tuple[str, str]], results: Sequence[FleetResult], notes: Sequence[str] = ()
) -> str:
    """results.md: what was run and where (INFO: label, text), the table, the acceptance line."""
    out = ["# Fleet benchmark: `ai-deploy deploy` on 1 host vs 4\n"]
    out += [f"- {label}: {text}" for label, text in info]
    out += [
        "",
        "Failed requests count every request scheduled from the rollout's start to the end of "
        "the window after it, over all hosts of the target; latencies are of successful "
        "requests only; ratios are against (a), the single host, from the same run. Serves "
        "after: what each host's /predict answered once the window after the rollout ended.",
        "",
        render_table(results),
        acceptance(results).text,
        "",
    ]
    if notes:
        out += ["## Notes\n", *(f"- {n}" for n in notes), ""]
    return "\n".join(out)


@dataclass(frozen=True)
class Acceptance:
    holds: bool | None  # None: (a) or (b) was not measured
    text: str


def acceptance(results: Sequence[FleetResult]) -> Acceptance:
    """(b)'s wall time within WALL_LIMIT x (a)'s, and 0 failed requests over the fleet in (b)
    (from its start to the end of the window after it), with (b) itself a success."""
    a = next((r for r in results if r.key == BASELINE), None)
    b = next((r for r in results if r.key == ONE_BATCH), None)
    if not (a and b and a.wall_s and b.wall_s is not None and b.summary):
        return Acceptance(None, "not measured: (a) or (b) is missing")
    x = b.wall_s / a.wall_s
    failed = b.summary.failed
    holds = x <= WALL_LIMIT and failed == 0 and b.as_expected
    verdict = "holds" if holds else "does NOT hold"
    text = (
        f"acceptance {verdict}: (b) wall {b.wall_s:.1f} s = {x:.2f}x (a)'s {a.wall_s:.1f} s "
        f"(limit {WALL_LIMIT:g}x); failed requests over the fleet during (b): {failed} of "
        f"{b.summary.requests}"
    )
    if not b.as_expected:
        text += f"; (b) exit {b.rc}, serves after: {serves_cell(b.serves_after)}"
    return Acceptance(holds, text)
