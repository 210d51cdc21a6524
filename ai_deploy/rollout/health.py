"""The outside health check: GET the host's health URL from the runner, as the seed did; and
one try of every host at once, for the rollout's floor."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

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


def unhealthy_now(
    urls: Mapping[str, str],
    timeout_s: float,
    check: Callable[..., tuple[bool, str]] = check_health,
) -> dict[str, str]:
    """The hosts of URLS (name -> health URL) that do not answer 200 at one try, all asked at
    once, with what was seen (the rollout's floor counts them as out of service)."""
    if not urls:
        return {}

    def ask(name: str) -> tuple[str, bool, str]:
        ok, why = check(urls[name], 1, 0, timeout_s, lambda _: None)
        return name, ok, why

    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
        return {name: why for name, ok, why in pool.map(ask, urls) if not ok}
