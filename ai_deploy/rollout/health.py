"""The outside health check: GET the host's health URL from the runner, as the seed did."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests


def check_health(
    url: str,
    attempts: int,
    interval_s: float,
    timeout_s: float,
    say: Callable[[str], None] = print,
) -> tuple[bool, str]:
    """GET URL until it answers 200: at most ATTEMPTS tries, INTERVAL_S apart (seed: 12 x 5 s)."""
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            reply = requests.get(url, timeout=timeout_s)
            if reply.status_code == 200:
                return True, f"{url} answered 200 on attempt {attempt}/{attempts}"
            last = f"answered {reply.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        say(f"health check {attempt}/{attempts}: {url} {last}")
        if attempt < attempts:
            time.sleep(interval_s)
    return False, f"{url} not healthy after {attempts} attempts ({last})"
