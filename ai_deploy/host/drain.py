"""How long a stop waits for the connections still open: `drain_timeout_s` is uvicorn's
`--timeout-graceful-shutdown` (in-flight responses and streams finish, then the process exits),
and systemd's TimeoutStopSec sits a margin above it, so systemd never kills a process whose
drain is still within its time. Before a service taken out of traffic stops (blue/green's old
colour), the deploy waits for the connections actually open on its port, bounded by the same
setting, and reports them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ai_deploy.host.remote import Remote

STOP_MARGIN_S = 15  # uvicorn's own exit after the drain: lifespan shutdown, freeing the GPU


def stop_timeout_s(drain_timeout_s: int) -> int:
    """systemd's TimeoutStopSec for a service that drains for DRAIN_TIMEOUT_S seconds."""
    return int(drain_timeout_s) + STOP_MARGIN_S


def unit_drain_values(drain_timeout_s: int) -> dict[str, int]:
    """The unit templates' values for a drain of DRAIN_TIMEOUT_S seconds."""
    return {
        "graceful_shutdown_s": int(drain_timeout_s),
        "stop_timeout_s": stop_timeout_s(drain_timeout_s),
    }


@dataclass(frozen=True)
class Drained:
    """What waiting for a stopped-from-traffic service's open connections found."""

    open_at_switch: int
    still_open: int
    seconds: float

    def message(self, what: str) -> str:
        if self.still_open:
            return (
                f"{what}: {self.open_at_switch} connection(s) open at the switch, "
                f"{self.still_open} still open after drain_timeout_s ({self.seconds:.1f} s): "
                "stopping it cuts them"
            )
        return (
            f"{what}: {self.open_at_switch} connection(s) open at the switch, "
            f"drained in {self.seconds:.1f} s"
        )


def open_connections(remote: Remote, port: int) -> int | None:
    """Established TCP connections to local PORT (None: `ss` could not tell)."""
    result = remote.run(f"ss -Htn state established '( sport = :{int(port)} )'")
    return len([line for line in result.stdout if line.strip()]) if result.ok else None


def wait_drained(
    remote: Remote,
    port: int,
    timeout_s: float,
    *,
    interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Drained | None:
    """Wait until no connection to PORT is open, at most TIMEOUT_S seconds; None when the host
    cannot count them (no `ss`), so the caller knows the wait was not done."""
    started = clock()
    first = count = open_connections(remote, port)
    if first is None:
        return None
    while count and clock() - started < timeout_s:
        sleep(interval_s)
        count = open_connections(remote, port)
        if count is None:
            return None
    return Drained(first, count or 0, clock() - started)
