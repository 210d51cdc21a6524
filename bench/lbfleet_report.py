"""What `bench.lbfleet` reports, pure: one result per rollout through HAProxy (hosts, drain or
not), its numbers against the goals (p99 during the rollout within P99_GOAL x steady with
drain; wall time within WALL_GOAL x (one host's start + lb_drain_wait_s x 2) x hosts / floor),
as a Markdown table and JSON. The time a deploy spent waiting for open streams to finish (what
each host's drain reported) is shown beside the wall time and taken out of it for the goal: it
is set by the streams (bounded by drain_timeout_s) and the formula has no term for it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench.metrics import Summary, format_ratio, ratio

P99_GOAL = 1.5
WALL_GOAL = 1.2
# What a host's drain says when it waited for open requests or connections (lb_drain: after
# the load balancer's wait; without it: at the service's stop).
_WAITED = re.compile(
    r"request\(s\) in flight, finished in (?P<a>[0-9.]+) s"
    r"|connection\(s\) open at the stop, all finished, stopped in (?P<b>[0-9.]+) s"
)


def stream_wait_s(output: str) -> float:
    """Seconds the deploy's hosts waited, in all, for open requests to finish (its output)."""
    return sum(float(m.group("a") or m.group("b")) for m in _WAITED.finditer(output))


@dataclass
class LbFleetResult:
    """One measured rollout through the load balancer."""

    hosts: int
    drain: bool
    release: str
    rc: int | None = None
    wall_s: float | None = None
    start_s: float | None = None  # one host's start, measured before the rollout
    drain_wait_s: float = 0.0
    floor: int = 1  # rollout_max_unavailable: hosts out of service at once
    stream_wait_s: float = 0.0  # of wall_s, waiting for open streams to finish (stream_wait_s)
    summary: Summary | None = None
    streams: int = 0
    streams_cut: int = 0
    fewest_up: int | None = None
    serves_after: dict[str, str] | None = None
    error: str | None = None  # why it was not measured

    @property
    def label(self) -> str:
        return f"{self.hosts} hosts, lb_drain={'true' if self.drain else 'false'}"

    @property
    def expected_wall_s(self) -> float | None:
        """(one host's start + lb_drain_wait_s x 2) x hosts / floor."""
        if self.start_s is None:
            return None
        return (self.start_s + self.drain_wait_s * 2) * self.hosts / self.floor

    @property
    def wall_x(self) -> float | None:
        return ratio(self.wall_s, self.expected_wall_s)

    @property
    def rollout_wall_x(self) -> float | None:
        """The wall time less the waits for open streams, against the formula."""
        wall = None if self.wall_s is None else self.wall_s - self.stream_wait_s
        return ratio(wall, self.expected_wall_s)

    @property
    def p99_x(self) -> float | None:
        s = self.summary
        return ratio(s.deploy_p99_ms, s.steady_p99_ms) if s else None

    @property
    def on_release(self) -> bool:
        return bool(self.serves_after) and set((self.serves_after or {}).values()) == {self.release}

    def goals(self) -> list[str]:
        """The goals this row misses (none for a row without drain: it is the baseline)."""
        if not self.drain:
            return []
        s, missed = self.summary, []
        if self.error or s is None:
            return ["not measured"]
        if self.rc != 0:
            missed.append(f"exit {self.rc}")
        if s.failed:
            missed.append(f"{s.failed} failed")
        if self.streams_cut:
            missed.append(f"{self.streams_cut} streams cut")
        if self.p99_x is None or self.p99_x > P99_GOAL:
            missed.append(f"p99 {format_ratio(self.p99_x)} > {P99_GOAL:g}x")
        if self.rollout_wall_x is None or self.rollout_wall_x > WALL_GOAL:
            wall_x = format_ratio(self.rollout_wall_x)
            missed.append(f"wall less stream waits {wall_x} > {WALL_GOAL:g}x")
        if not self.on_release:
            missed.append("not every host on the release")
        return missed

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            expected_wall_s=self.expected_wall_s,
            wall_x=self.wall_x,
            rollout_wall_x=self.rollout_wall_x,
            p99_x=self.p99_x,
            missed_goals=self.goals(),
        )
        return data


COLUMNS = (
    "Rollout",
    "Exit",
    "Failed / requests",
    "Streams cut",
    "Fewest in service",
    "p99 steady / rollout ms",
    f"p99 x (goal <= {P99_GOAL:g}x with drain)",
    "Wall s (of it waiting for streams)",
    "(start + 2 x wait) x hosts / floor",
    "Wall x",
    f"Wall less stream waits x (goal <= {WALL_GOAL:g}x with drain)",
    "Goals",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(r: LbFleetResult) -> list[str]:
    if r.summary is None or r.error:
        return [r.label, r.error or "not measured", *["-"] * (len(COLUMNS) - 2)]
    s = r.summary
    kinds = ", ".join(f"{k} {n}" for k, n in s.failures_by_status.items())
    start = "-" if r.start_s is None else f"({r.start_s:.1f} + 2 x {r.drain_wait_s:g})"
    missed = r.goals()
    return [
        r.label,
        str(r.rc),
        f"{s.failed} / {s.requests}" + (f" ({kinds})" if kinds else ""),
        f"{r.streams_cut} / {r.streams}",
        "-" if r.fewest_up is None else f"{r.fewest_up} of {r.hosts}",
        f"{_ms(s.steady_p99_ms)} / {_ms(s.deploy_p99_ms)}",
        format_ratio(r.p99_x),
        f"{_s(r.wall_s)} ({_s(r.stream_wait_s)})",
        f"{start} x {r.hosts} / {r.floor} = {_s(r.expected_wall_s)}",
        format_ratio(r.wall_x),
        format_ratio(r.rollout_wall_x),
        ("baseline" if not r.drain else "met") if not missed else "missed: " + "; ".join(missed),
    ]


def render_table(results: Sequence[LbFleetResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in results:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row(r)) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(
    info: Sequence[tuple[str, str]], results: Sequence[LbFleetResult], notes: Sequence[str] = ()
) -> str:
    """lbfleet.md: what was run and where (INFO: label, text), the table, the notes."""
    out = ["# A fleet behind HAProxy: drain vs no drain\n"]
    out += [f"- {label}: {text}" for label, text in info]
    out += [
        "",
        "Failed requests count every request scheduled from the rollout's start to the end of "
        "the window after it, through the load balancer; streams are cut when their closing "
        "`[DONE]` never came; fewest in service is the smallest number of hosts HAProxy had UP "
        "at any sample during the rollout. p99 is of successful requests, during the rollout "
        "against the steady window before it. Wall time is the deploy command's, against "
        "(one host's start, measured just before, + lb_drain_wait_s x 2) x hosts / floor. "
        "Of the wall time, the seconds the hosts waited for open streams to finish (each "
        "host's drain reports them: after the load balancer's wait with lb_drain, at the "
        "service's stop without) are shown in brackets: a stream that is not to be cut keeps "
        "its host until it ends, however fast the rollout, so the wall goal is judged on the "
        "wall time less those waits; the raw ratio is beside it.",
        "",
        render_table(results),
    ]
    if notes:
        out += ["## Notes\n", *(f"- {n}" for n in notes), ""]
    return "\n".join(out)
