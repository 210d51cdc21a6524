"""Stopping a one-copy service (socket, restart) looks at the connections its process holds:
"wait" lets them finish and says how many were cut at drain_timeout_s, "cut" kills it and says
how many it cut; connections it does not hold (another process's, a socket's backlog) are not
counted; a host that cannot count them is said so and the service is not killed."""

from __future__ import annotations

import pytest

from ai_deploy.host.drain import Stopped, stop_draining
from ai_deploy.host.remote import Result

pytestmark = pytest.mark.unit
PID = 4242


def ss_line(port: int, peer: int, pid: int | None) -> str:
    users = f' users:(("uvicorn",pid={pid},fd=1{peer % 10}))' if pid else ""
    return f"0 0 10.0.0.2:{port} 10.0.0.9:{peer}{users}"


class StoppingHost:
    """A service with PID holding HELD[i] connections at the i-th count (the last repeats),
    whose process exits ALIVE_S seconds after a stop; time moves when the wait sleeps."""

    def __init__(self, held: list[int], alive_s: float, ss: bool = True, pid: int = PID) -> None:
        self.held, self.alive_s, self.ss, self.pid = held, alive_s, ss, pid
        self.calls: list[str] = []
        self.said: list[str] = []
        self.warned: list[str] = []
        self.now, self.counted = 0.0, 0
        self.stop_at: float | None = None

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        self.calls.append(script)
        if script.startswith("systemctl show -p MainPID"):
            return Result(True, [str(self.pid)], [])
        if script.startswith("ss "):
            if not self.ss:
                return Result(False, [], ["ss: command not found"])
            n = self.held[min(self.counted, len(self.held) - 1)]
            self.counted += 1
            mine = [ss_line(8000, 40000 + i, self.pid) for i in range(n)]
            other = [ss_line(8000, 50000, 777), ss_line(8000, 50001, None)]  # not ours
            return Result(True, mine + other, [])
        if script.startswith("systemctl stop --no-block"):
            self.stop_at = self.now
            return Result(True, [], [])
        if script.startswith("kill -0"):
            assert self.stop_at is not None, "waited for a process never stopped"
            return Result(self.now - self.stop_at < self.alive_s, [], [])
        return Result(True, [], [])

    def say(self, message: str) -> None:
        self.said.append(message)

    def warn(self, message: str) -> None:
        self.warned.append(message)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def stop(self, mode: str, timeout_s: float = 60) -> Stopped | None:
        return stop_draining(
            self,
            "ai-server.service",
            8000,
            timeout_s=timeout_s,
            mode=mode,
            interval_s=1.0,
            clock=lambda: self.now,
            sleep=self.sleep,
        )


def test_wait_lets_the_held_connections_finish() -> None:
    host = StoppingHost([2, 2, 1, 0], alive_s=3)
    stopped = host.stop("wait")
    assert stopped == Stopped(open_at_stop=2, cut=0, seconds=3.0)
    assert not any("SIGKILL" in c for c in host.calls)
    assert "2 connection(s) open on port 8000" in host.said[0]
    assert "all finished" in stopped.message("ai-server.service", "wait")


def test_wait_says_how_many_were_cut_at_drain_timeout_s() -> None:
    host = StoppingHost([3, 1], alive_s=10)  # a stream longer than the drain
    stopped = host.stop("wait", timeout_s=10)
    assert stopped is not None and (stopped.open_at_stop, stopped.cut) == (3, 1)
    assert "1 still open after drain_timeout_s" in stopped.message("ai-server.service", "wait")


def test_cut_kills_at_once_and_says_how_many() -> None:
    host = StoppingHost([2], alive_s=100)
    stopped = host.stop("cut")
    assert stopped is not None and (stopped.open_at_stop, stopped.cut) == (2, 2)
    assert any("systemctl kill --signal=SIGKILL" in c for c in host.calls)
    assert "cutting 2 connection(s)" in host.warned[0]
    assert "2 open connection(s) cut" in stopped.message("ai-server.service", "cut")


@pytest.mark.parametrize("mode", ["wait", "cut"])
def test_nothing_held_means_no_separate_stop(mode: str) -> None:
    host = StoppingHost([0], alive_s=100)
    assert host.stop(mode) == Stopped(0, 0, 0.0)
    assert not any(c.startswith(("systemctl stop", "systemctl kill")) for c in host.calls)


@pytest.mark.parametrize("mode", ["wait", "cut"])
def test_a_host_that_cannot_count_is_said_so_and_nothing_is_killed(mode: str) -> None:
    host = StoppingHost([2], alive_s=100, ss=False)
    assert host.stop(mode) is None
    assert "could not count" in host.warned[0]
    assert not any(c.startswith(("systemctl stop", "systemctl kill")) for c in host.calls)


def test_no_process_means_nothing_to_drain() -> None:
    host = StoppingHost([5], alive_s=100, pid=0)
    assert host.stop("cut") is None
    assert not any(c.startswith(("ss ", "systemctl kill")) for c in host.calls)


def test_a_process_that_never_exits_does_not_hold_the_deploy_forever() -> None:
    host = StoppingHost([1], alive_s=10**9)
    stopped = host.stop("wait", timeout_s=5)
    assert stopped is not None and stopped.cut == 1
    assert stopped.seconds < 5 + 15 + 31
