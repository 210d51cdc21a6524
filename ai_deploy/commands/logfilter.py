"""Which log lines `ai-deploy logs` shows: those since a time (read from the time stamp a line
starts with; lines without one, such as a traceback's, go with the stamped line before them)
and those matching a pattern, the last N of them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ai_deploy.commands.when import parse_iso

# "2026-11-29 22:10:05", "2026-11-29T22:10:05.123Z", "[2026-11-29 22:10:05,123 +0000]", ...
_STAMP = re.compile(
    r"^\[?(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d+))?\s?(Z|[+-]\d{2}:?\d{2})?"
)


def stamp_of(line: str) -> float | None:
    """The epoch of the time stamp LINE starts with (local time when it names no zone)."""
    match = _STAMP.match(line)
    if not match:
        return None
    day, clock, fraction, zone = match.groups()
    text = f"{day}T{clock}{f'.{fraction[:6]}' if fraction else ''}"
    if zone:
        zone = "+00:00" if zone == "Z" else zone
        text += zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    return parse_iso(text)


@dataclass
class Selection:
    lines: list[str] = field(default_factory=list)
    unstamped: bool = False  # --since was given and no line carried a time stamp


def select(
    lines: Iterable[str],
    *,
    since: float | None = None,
    pattern: re.Pattern[str] | None = None,
    last: int | None = None,
) -> Selection:
    """The lines to show: stamped at or after SINCE (with the unstamped lines that follow
    them), matching PATTERN, the last LAST of them."""
    chosen: list[str] = []
    stamped = False
    keep = since is None
    for line in lines:
        if since is not None:
            epoch = stamp_of(line)
            if epoch is not None:
                stamped = True
                keep = epoch >= since
        if keep and (pattern is None or pattern.search(line)):
            chosen.append(line)
    if last is not None:
        chosen = chosen[-last:] if last > 0 else []
    return Selection(chosen, unstamped=since is not None and not stamped)


def follows(line: str, pattern: re.Pattern[str] | None) -> bool:
    """Whether a new LINE of a followed log is shown."""
    return pattern is None or bool(pattern.search(line))
