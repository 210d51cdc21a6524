"""How long a stop waits for the connections still open: `drain_timeout_s` is uvicorn's
`--timeout-graceful-shutdown` (in-flight responses and streams finish, then the process exits),
and systemd's TimeoutStopSec sits a margin above it, so systemd never kills a process whose
drain is still within its time. Before a service taken out of traffic stops (blue/green's old
colour), the deploy waits for the connections actually open on its port, bounded by the same
setting, and reports them. A one-copy service (socket, restart) is stopped looking at the
connections its process holds: `drain_mode` "wait" lets them finish (bounded) and says how many
were still cut at the end, "cut" kills it at once and says how many it cut."""

from __future__ import annotations

import shlex
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
    lines = _established(remote, port)
    return None if lines is None else len([line for line in lines if line.strip()])


def _established(remote: Remote, port: int, *, processes: bool = False) -> list[str] | None:
    """`ss`'s lines for the established connections to local PORT (with their processes)."""
    flags = "-Htnp" if processes else "-Htn"
    result = remote.run(f"ss {flags} state established '( sport = :{int(port)} )'")
    return result.stdout if result.ok else None


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


@dataclass(frozen=True)
class Stopped:
    """What stopping a one-copy service (socket, restart) did to the connections its process
    held: how many were open when the stop began, how many it cut, and how long it took."""

    open_at_stop: int
    cut: int
    seconds: float

    def message(self, unit: str, mode: str) -> str:
        if not self.open_at_stop:
            return f"{unit}: no connection open at the stop"
        if mode == "cut":
            return (
                f"{unit}: drain_mode=cut: {self.cut} open connection(s) cut at the stop "
                "(drain_mode=wait lets them finish)"
            )
        if self.cut:
            return (
                f"{unit}: {self.open_at_stop} connection(s) open at the stop, {self.cut} still "
                f"open after drain_timeout_s ({self.seconds:.1f} s) and cut"
            )
        return (
            f"{unit}: {self.open_at_stop} connection(s) open at the stop, all finished, "
            f"stopped in {self.seconds:.1f} s"
        )

    @property
    def journal(self) -> str:
        return f"open-at-stop={self.open_at_stop} cut={self.cut}"


def held_connections(remote: Remote, port: int, pid: int) -> int | None:
    """Established connections to local PORT that process PID holds (accepted, not those still
    waiting in a socket's backlog); None when `ss` cannot tell."""
    lines = _established(remote, port, processes=True)
    return None if lines is None else len([line for line in lines if f"pid={int(pid)}," in line])


def main_pid(remote: Remote, unit: str) -> int:
    out = remote.run(f"systemctl show -p MainPID --value {shlex.quote(unit)}").stdout
    value = out[0].strip() if out else ""
    return int(value) if value.isdigit() else 0


def stop_draining(
    remote: Remote,
    unit: str,
    port: int,
    *,
    timeout_s: float,
    mode: str,
    interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Stopped | None:
    """Stop UNIT, whose process serves PORT, looking at the connections it holds first: with
    MODE "wait" its graceful shutdown finishes them (at most TIMEOUT_S, drain_timeout_s) while
    they are counted; with "cut" it is killed at once. None when UNIT runs no process or its
    connections cannot be counted (it is then left to the restart, which drains as "wait")."""
    pid = main_pid(remote, unit)
    if not pid:
        return None
    count = held_connections(remote, port, pid)
    if count is None:
        remote.warn(f"could not count the connections open on port {port} (no `ss`)")
        return None
    if not count:
        return Stopped(0, 0, 0.0)
    q = shlex.quote(unit)
    started = clock()
    if mode == "cut":
        remote.warn(f"drain_mode=cut: cutting {count} connection(s) open on port {port}")
        remote.run(f"systemctl kill --signal=SIGKILL {q}; systemctl stop {q}")
        return Stopped(count, count, clock() - started)
    remote.say(
        f"{count} connection(s) open on port {port}: {unit} finishes them before it stops "
        f"(at most drain_timeout_s={timeout_s:.0f} s)"
    )
    remote.run(f"systemctl stop --no-block {q}")
    last, give_up = count, started + stop_timeout_s(int(timeout_s)) + 30
    while remote.run(f"kill -0 {int(pid)} 2>/dev/null").ok and clock() < give_up:
        seen = held_connections(remote, port, pid)
        last = last if seen is None else seen
        sleep(interval_s)
    seconds = clock() - started
    return Stopped(count, last if seconds >= timeout_s else 0, seconds)
