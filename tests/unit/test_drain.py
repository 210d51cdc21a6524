"""Waiting for the connections a service taken out of traffic still has: counted with `ss`,
bounded by drain_timeout_s, reported; a host that cannot count them is said so."""

from __future__ import annotations

import pytest

from ai_deploy.host.drain import Drained, stop_timeout_s, unit_drain_values, wait_drained
from ai_deploy.host.remote import Result

pytestmark = pytest.mark.unit
SS_LINE = "ESTAB 0 0 127.0.0.1:8001 127.0.0.1:{}"


class CountingHost:
    """`ss` answers with COUNTS[i] connections on the i-th call (the last one repeats);
    time moves only when the wait sleeps."""

    def __init__(self, counts: list[int | None]) -> None:
        self.counts = counts
        self.calls: list[str] = []
        self.now = 100.0

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        self.calls.append(script)
        count = self.counts[min(len(self.calls) - 1, len(self.counts) - 1)]
        if count is None:
            return Result(False, [], ["ss: command not found"])
        return Result(True, [SS_LINE.format(40000 + i) for i in range(count)], [])

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, timeout_s: float) -> Drained | None:
        return wait_drained(
            self, 8001, timeout_s, interval_s=1.0, clock=lambda: self.now, sleep=self.sleep
        )


def test_open_connections_are_waited_for_until_they_end() -> None:
    host = CountingHost([3, 2, 2, 1, 0])
    drained = host.wait(300)
    assert drained == Drained(open_at_switch=3, still_open=0, seconds=4.0)
    assert "( sport = :8001 )" in host.calls[0] and "state established" in host.calls[0]
    assert drained.message("draining blue") == (
        "draining blue: 3 connection(s) open at the switch, drained in 4.0 s"
    )


def test_the_wait_ends_at_drain_timeout_s_and_says_how_many_are_cut() -> None:
    host = CountingHost([5, 4])  # a stream that never ends
    drained = host.wait(3)
    assert drained is not None
    assert (drained.open_at_switch, drained.still_open, drained.seconds) == (5, 4, 3.0)
    assert "4 still open after drain_timeout_s" in drained.message("draining green")


def test_nothing_open_means_no_wait() -> None:
    host = CountingHost([0])
    assert host.wait(300) == Drained(0, 0, 0.0)
    assert len(host.calls) == 1


@pytest.mark.parametrize("counts", [[None], [2, None]])
def test_a_host_that_cannot_count_is_not_reported_as_drained(counts: list[int | None]) -> None:
    assert CountingHost(counts).wait(300) is None


def test_systemd_waits_longer_than_the_drain() -> None:
    assert stop_timeout_s(300) == 315
    assert unit_drain_values(1) == {"graceful_shutdown_s": 1, "stop_timeout_s": 16}
