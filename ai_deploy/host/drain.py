"""How long a stop waits for the connections still open: `drain_timeout_s` is uvicorn's
`--timeout-graceful-shutdown` (in-flight responses and streams finish, then the process exits),
and systemd's TimeoutStopSec sits a margin above it, so systemd never kills a process whose
drain is still within its time."""

from __future__ import annotations

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
