"""The numbers the benchmark reports, computed from request records: percentiles, the windows
in which requests failed, a per-run summary, and ours/seed ratios. Pure functions only."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol


class Timed(Protocol):
    """What the metrics need of a request record."""

    @property
    def scheduled(self) -> float: ...

    @property
    def ok(self) -> bool: ...

    @property
    def latency(self) -> float: ...

    @property
    def status(self) -> str: ...

    @property
    def variant(self) -> str | None: ...


def percentile(values: Iterable[float], q: float) -> float | None:
    """The Q-th percentile (0-100) with linear interpolation between the closest ranks (as
    numpy's default); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class FailureWindow:
    """A run of consecutive failed requests (in scheduled order).

    start: scheduled time of the first failed request; end: scheduled time of the next request
    that succeeded, or, when none did (`ongoing`), the last failed one's plus one interval."""

    start: float
    end: float
    count: int
    ongoing: bool

    @property
    def duration(self) -> float:
        return self.end - self.start


def failure_windows(records: Sequence[Timed], interval: float) -> list[FailureWindow]:
    """The maximal runs of failed requests among RECORDS, in order of scheduled time."""
    ordered = sorted(records, key=lambda r: r.scheduled)
    windows: list[FailureWindow] = []
    first: float | None = None
    last = 0.0
    count = 0
    for rec in ordered:
        if not rec.ok:
            if first is None:
                first, count = rec.scheduled, 0
            last = rec.scheduled
            count += 1
        elif first is not None:
            windows.append(FailureWindow(first, rec.scheduled, count, False))
            first = None
    if first is not None:
        windows.append(FailureWindow(first, last + interval, count, True))
    return windows


def longest_window(windows: Sequence[FailureWindow]) -> FailureWindow | None:
    return max(windows, key=lambda w: w.duration, default=None)


def _between(records: Iterable[Timed], start: float, end: float) -> list[Timed]:
    return [r for r in records if start <= r.scheduled <= end]


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


@dataclass(frozen=True)
class Summary:
    """One measured deploy. Counts cover requests scheduled from the deploy's start to the end
    of the window after it; latencies are of successful requests only."""

    requests: int
    failed: int
    failed_pct: float
    failures_by_status: dict[str, int]
    longest_failure_s: float
    longest_failure_ongoing: bool
    steady_requests: int
    steady_failed: int
    steady_p50_ms: float | None
    steady_p99_ms: float | None
    deploy_requests: int
    deploy_p50_ms: float | None
    deploy_p99_ms: float | None
    serves_after: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def serving_at_end(records: Sequence[Timed], end: float, span: float = 1.0) -> str:
    """The variant that answered the last successful request scheduled in the final SPAN
    seconds, or "down" when none of them succeeded."""
    tail = sorted(_between(records, end - span, end), key=lambda r: r.scheduled)
    answered = [r for r in tail if r.ok]
    if not answered:
        return "down"
    return answered[-1].variant or "?"


def summarize(
    records: Sequence[Timed],
    *,
    steady: tuple[float, float],
    deploy: tuple[float, float],
    end: float,
    interval: float,
) -> Summary:
    """Summarize RECORDS: STEADY is the window just before the deploy, DEPLOY its start and
    end, END the end of the measurement (the deploy's end plus a tail)."""
    measured = _between(records, deploy[0], end)
    failed = [r for r in measured if not r.ok]
    windows = failure_windows(measured, interval)
    longest = longest_window(windows)
    steady_recs = _between(records, *steady)
    during = _between(records, *deploy)
    steady_ok = [r.latency for r in steady_recs if r.ok]
    during_ok = [r.latency for r in during if r.ok]
    return Summary(
        requests=len(measured),
        failed=len(failed),
        failed_pct=100.0 * len(failed) / len(measured) if measured else 0.0,
        failures_by_status=dict(Counter(r.status for r in failed).most_common()),
        longest_failure_s=longest.duration if longest else 0.0,
        longest_failure_ongoing=bool(longest and longest.ongoing),
        steady_requests=len(steady_recs),
        steady_failed=sum(1 for r in steady_recs if not r.ok),
        steady_p50_ms=_ms(percentile(steady_ok, 50)),
        steady_p99_ms=_ms(percentile(steady_ok, 99)),
        deploy_requests=len(during),
        deploy_p50_ms=_ms(percentile(during_ok, 50)),
        deploy_p99_ms=_ms(percentile(during_ok, 99)),
        serves_after=serving_at_end(measured, end),
    )


def ratio(ours: float | None, seed: float | None) -> float | None:
    """ours / seed; None when unknown or both are zero, infinity when only the seed's is 0."""
    if ours is None or seed is None:
        return None
    if seed == 0:
        return None if ours == 0 else math.inf
    return ours / seed


def format_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:.2f}x"
