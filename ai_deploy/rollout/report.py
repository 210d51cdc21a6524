"""Where each host of a rollout ended: before, after (the release it serves now), the outcome
and the seconds it took; as a text table (output, job summary, notifications) and as data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Outcomes of a host in a rollout.
UPDATED = "updated"  # serves the new release
UNCHANGED = "unchanged"  # already served it
NOT_REACHED = "not reached"  # the rollout stopped before its batch
SWITCHED_BACK = "switched back"  # served the new release, then the previous one again
FAILED = "failed"  # the new release never went live there; the previous one serves
STUCK = "switch back failed"  # neither release is known to serve
INTERRUPTED = "interrupted"  # the rollout was stopped during its step: either release


@dataclass
class HostResult:
    host: str
    step: str
    before: str | None
    after: str | None
    outcome: str = NOT_REACHED
    seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def render_table(results: list[HostResult]) -> list[str]:
    """The per-host table, one line each, columns aligned."""
    head = ("host", "step", "before", "after", "outcome", "time")
    rows = [
        (
            r.host,
            r.step,
            r.before or "-",
            r.after or "-",
            r.outcome + (f" ({r.detail})" if r.detail else ""),
            f"{r.seconds:.1f}s",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines
