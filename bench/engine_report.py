"""What the engine benchmark reports, pure: one result per measured deploy, the outage seen by
the clients, the stand-in engine's start-up figures from its log, the tables and the verdicts
(the outage with preparation against without, the 120-second stream per strategy)."""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.engine_load import StreamResult
from bench.metrics import Summary, format_ratio, ratio
from bench.models_report import median
from testkit.load import RequestRecord

OUTAGE_GOAL = 0.5  # the outage with preparation is at most this times the one without
_PHASES = re.compile(
    r"start-up phases (\{[^}]*\}), compile cache hit: (True|False|None), (\d+) bytes of weights"
)
DRAIN_WORDS = ("connection(s)", "drain")  # the deploy's lines about open connections


@dataclass(frozen=True)
class StartFigures:
    """The stand-in engine's last start as its log tells it (engine.py's phase timings)."""

    phases: dict[str, float]
    compile_cache_hit: bool | None
    weights_bytes: int

    @property
    def total_s(self) -> float:
        return sum(self.phases.values())


def parse_start(log: str) -> StartFigures | None:
    """The last start-up line the example app logged in LOG; None when there is none."""
    found = _PHASES.findall(log)
    if not found:
        return None
    phases, hit, size = found[-1]
    value = ast.literal_eval(phases)
    cache_hit = None if hit == "None" else hit == "True"
    return StartFigures({str(k): float(v) for k, v in value.items()}, cache_hit, int(size))


def no_answer_s(records: Sequence[RequestRecord], start: float, end: float) -> float:
    """The longest time between START and END in which no request was answered successfully:
    the outage the clients saw (requests queued in a socket's backlog count once answered)."""
    answered = sorted(r.end for r in records if r.ok and start <= r.end <= end)
    marks = [start, *answered, end]
    return max(b - a for a, b in itertools.pairwise(marks))


PREP_WORDS = ("page cache:", "] outage ", "] start ")  # its preparation and the outage line


def said_lines(output: str, words: Sequence[str] = DRAIN_WORDS) -> list[str]:
    """The deploy's own lines with one of WORDS (by default: about the connections open at
    the stop or switch)."""
    return [line.strip() for line in output.splitlines() if any(w in line for w in words)][:8]


@dataclass
class Round:
    """One measured deploy. KIND: "strategy" (load + 4 long streams), "stream" (the
    long stream), "without" / "with" (the one-copy outage, without or with preparation)."""

    key: str
    kind: str
    strategy: str
    data: tuple[str, ...]
    release: str = ""
    rc: int | None = None
    wall_s: float | None = None
    summary: Summary | None = None
    outage_s: float | None = None  # from the clients' answers
    host_outage_s: float | None = None  # what the deploy recorded on the host, when it does
    start: StartFigures | None = None
    streams: list[StreamResult] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    prepared: list[str] = field(default_factory=list)  # page cache and outage lines
    error: str | None = None

    @property
    def streams_cut(self) -> int:
        return sum(1 for s in self.streams if not s.intact)

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "kind": self.kind,
            "strategy": self.strategy,
            "data": list(self.data),
            "release": self.release,
            "exit_code": self.rc,
            "wall_s": self.wall_s,
            "summary": self.summary.as_dict() if self.summary else None,
            "outage_s": self.outage_s,
            "host_outage_s": self.host_outage_s,
            "start": vars(self.start) if self.start else None,
            "streams": [s.as_dict() for s in self.streams],
            "drain_lines": self.drained,
            "preparation_lines": self.prepared,
            "error": self.error,
        }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table: HEAD, then one line per row."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _said(r: Round) -> str:
    return "<br>".join(r.drained) or "-"


def _how(r: Round) -> str:
    return " ".join((r.strategy, *r.data))


def strategies_table(rounds: Sequence[Round]) -> str:
    head = ("deploy", "strategy", "exit", "wall s", "failed / requests", "streams cut",
            "p99 steady ms", "p99 deploy ms", "deploy / steady", "no answer s",
            "the deploy on open connections")  # fmt: skip
    rows: list[Sequence[object]] = []
    for r in rounds:
        s = r.summary
        if s is None:
            rows.append((r.key, r.strategy, r.rc, "-", r.error or "-", *["-"] * 6))
            continue
        rows.append((
            r.key, _how(r), r.rc, _s(r.wall_s),
            f"{s.failed} / {s.requests}", f"{r.streams_cut} / {len(r.streams)}",
            _ms(s.steady_p99_ms), _ms(s.deploy_p99_ms),
            format_ratio(ratio(s.deploy_p99_ms, s.steady_p99_ms)), _s(r.outage_s), _said(r),
        ))  # fmt: skip
    return _table(head, rows)


def stream_table(rounds: Sequence[Round]) -> str:
    head = ("deploy", "strategy", "exit", "wall s", "tokens / asked", "intact",
            "tokens from release", "the deploy on open connections")  # fmt: skip
    rows: list[Sequence[object]] = []
    for r in rounds:
        s = r.streams[0] if r.streams else None
        got = (f"{s.tokens} / {s.asked}", s.intact, ", ".join(sorted(s.releases))) if s else (
            r.error or "-", "-", "-"
        )  # fmt: skip
        rows.append((r.key, _how(r), r.rc, _s(r.wall_s), *got,
                     _said(r)))  # fmt: skip
    return _table(head, rows)


def outage_table(rounds: Sequence[Round]) -> str:
    head = ("deploy", "preparation", "exit", "no answer s (clients)", "outage s (host)",
            "weights s", "compile s", "compile cache hit", "start s", "weights MB",
            "the deploy on preparation and outage")  # fmt: skip
    rows: list[Sequence[object]] = []
    for r in rounds:
        f = r.start
        phases = f.phases if f else {}
        rows.append((
            r.key, r.kind, r.rc, _s(r.outage_s), _s(r.host_outage_s),
            _s(phases.get("weights")), _s(phases.get("compile")),
            f.compile_cache_hit if f else "-", _s(f.total_s if f else None),
            f"{f.weights_bytes / 1e6:.0f}" if f else "-", "<br>".join(r.prepared) or "-",
        ))  # fmt: skip
    return _table(head, rows)


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: not measurable in this run
    text: str


def outage_verdict(rounds: Sequence[Round], preparation_built: bool) -> Verdict:
    """The outage with preparation (median) against without (median), the goal OUTAGE_GOAL."""
    without = median([r.outage_s for r in rounds if r.kind == "without" and r.outage_s])
    with_ = median([r.outage_s for r in rounds if r.kind == "with" and r.outage_s])
    x = ratio(with_, without)
    figures = f"with {_s(with_)} s, without {_s(without)} s: {format_ratio(x)}"
    if x is None:
        return Verdict(None, f"outage: not measured ({figures})")
    if not preparation_built:
        return Verdict(
            None,
            f"outage: {figures}; the page-cache preparation (page_cache_warm) is not in this "
            "checkout, so only the compile cache differs: not yet measurable against the goal "
            f"{OUTAGE_GOAL}x",
        )
    ok = x <= OUTAGE_GOAL
    return Verdict(ok, f"outage {figures} (goal <= {OUTAGE_GOAL}x): {'met' if ok else 'NOT met'}")


def _one_connection(lines: Sequence[str], words: str) -> bool:
    """Whether one of the deploy's LINES says exactly one connection, followed by WORDS."""
    one = re.compile(rf"(?<![0-9])1 connection\(s\) {re.escape(words)}")
    return any(one.search(line) for line in lines)


def stream_verdict(r: Round) -> Verdict:
    """The long stream: intact (blue/green, socket with drain_mode=wait) and the deploy says
    it waited for one connection, or cut and the deploy says it cut one (drain_mode=cut);
    never a silent cut."""
    if not r.streams or r.rc is None:
        return Verdict(False, f"{r.key}: not measured ({r.error or 'no stream'})")
    s = r.streams[0]
    said = " / ".join(r.drained) or "nothing said about open connections"
    if "drain_mode=cut" in r.data:
        ok = not s.intact and any("cutting 1 connection(s)" in line for line in r.drained)
        what = "cut, and the deploy said so" if ok else "NOT as expected"
    else:
        bg = r.strategy == "bluegreen"
        words = "open at the switch, drained" if bg else "open at the stop, all finished"
        ok = s.intact and _one_connection(r.drained, words)
        what = "intact, and the deploy reported one connection waited for" if ok else (
            "NOT as expected"
        )  # fmt: skip
    got = f"{s.tokens}/{s.asked} tokens, [DONE] {'seen' if s.done else 'missing'}"
    return Verdict(ok, f"{r.key} (exit {r.rc}): {what}; {got}; deploy: {said}")


def render_markdown(info: Sequence[tuple[str, str]], rounds: Sequence[Round],
                    preparation_built: bool, notes: Sequence[str]) -> str:  # fmt: skip
    lines = ["# Engine benchmark: `python -m bench.engine`", ""]
    lines += [f"- **{k}**: {v}" for k, v in info]
    strategy = [r for r in rounds if r.kind == "strategy"]
    stream = [r for r in rounds if r.kind == "stream"]
    outage = [r for r in rounds if r.kind in ("with", "without")]
    lines += ["", "## Per strategy: 20 req/s of POST /v1/completions and 4 long streams", ""]
    lines += [strategies_table(strategy), ""]
    lines += ["## The long stream, open when the release goes live (no load)", ""]
    lines += [stream_table(stream)]
    lines += [""] + [f"- {stream_verdict(r).text}" for r in stream]
    lines += ["", "## The one-copy outage, without and with preparation (socket)", ""]
    lines += [outage_table(outage), "", f"- {outage_verdict(outage, preparation_built).text}"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
