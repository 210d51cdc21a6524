"""Times as the day-2 commands show them: an instant in local time with its age
("2026-11-29 22:10 (3 min ago)"), and the TIME a user gives to `--since`."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|d|day|w|week)s?\s*(ago)?\s*$")
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_UNIT_S |= {"w": 7 * 86400, "week": 7 * 86400}


def parse_iso(text: str) -> float | None:
    """The epoch of an ISO 8601 time ("2026-11-29T22:10:05Z", with or without a zone; none is
    read as local time); None when TEXT is not one."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp()


def local_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def age(seconds: float) -> str:
    """How long SECONDS is, as people say it: "40 s ago", "3 min ago", "2 h 5 min ago",
    "4 days ago"; a time in the future reads "in ..."."""
    ahead = seconds < 0
    s = int(abs(seconds))
    if s < 60:
        text = f"{s} s"
    elif s < 3600:
        text = f"{s // 60} min"
    elif s < 86400:
        hours, minutes = divmod(s // 60, 60)
        text = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    else:
        days = s // 86400
        text = f"{days} day{'s' if days != 1 else ''}"
    return f"in {text}" if ahead else f"{text} ago"


def when_text(epoch: float | None, now: float | None = None) -> str:
    """EPOCH in local time with its age, or "unknown"."""
    if epoch is None:
        return "unknown"
    now = time.time() if now is None else now
    return f"{local_time(epoch)} ({age(now - epoch)})"


def parse_since(text: str, now: float | None = None) -> float:
    """The epoch `--since TEXT` means: a duration back from now ("10m", "2 hours", "1d ago"),
    a time today ("22:10"), "today"/"yesterday", or a date and time ("2026-11-29 22:10",
    ISO 8601, local unless it names a zone). ValueError naming TEXT otherwise."""
    now = time.time() if now is None else now
    value = text.strip().lower()
    match = _RELATIVE.match(value)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return midnight.timestamp()
    if value == "yesterday":
        return (midnight - timedelta(days=1)).timestamp()
    epoch: float | None
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
        parts = [int(p) for p in value.split(":")] + [0]
        try:
            epoch = midnight.replace(hour=parts[0], minute=parts[1], second=parts[2]).timestamp()
        except ValueError:
            epoch = None  # 25:99: said below
    else:
        epoch = parse_iso(text)
    if epoch is None:
        raise ValueError(
            f"--since {text!r}: give a duration (10m, 2h, 1d), a time today (22:10) or a date "
            "and time (2026-11-29 22:10)"
        )
    return epoch
