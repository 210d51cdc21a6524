"""A rollout whose lock holder loses a host's lease (ai_deploy.rollout.run, fleetlock): it changes
no host after that, neither a next step nor a switch-back, and ends with an exit code and a
message naming the host. The hosts here are a table of what each serves, changed only by the
stand-in pyinfra run, so "changed nothing" is read from that state."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ai_deploy.host.outcome import SERVED, HostOutcome
from ai_deploy.rollout import exitcodes, fleetlock, report
from ai_deploy.rollout import run as rollout_run
from ai_deploy.rollout.fleetlock import Fleet, holding
from ai_deploy.rollout.plan import HostFacts
from ai_deploy.rollout.pyinfra_run import PyinfraRun
from ai_deploy.rollout.run import Health, Rollout, run_rollout

pytestmark = pytest.mark.unit

HOSTS = ("host-a", "host-b", "host-c", "host-d")
OLD, NEW = "r-old", "r-new"
WHY = "its lease was not renewed for 140 s (the host does not answer)"


class FakeFleet:
    """What each host serves, the holder's Fleet, and what happens during a step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.serving = dict.fromkeys(HOSTS, OLD)
        self.fleet = Fleet(
            facts={
                # each host answers health at its own "address": the URL names the host
                h: HostFacts(h, h, 8000, "/health", "socket", current=OLD)
                for h in HOSTS
            },
            # batches of 2 one-copy (socket) hosts: a floor that lets 2 out at once
            settings={
                "rollout_canary": "1",
                "rollout_batch_size": "2",
                "rollout_wait_s": 0,
                "rollout_max_unavailable": "2",
            },
        )
        self.runs: list[tuple[str, list[str]]] = []
        self.during_step: Callable[[list[str]], None] = lambda hosts: None
        self.unhealthy: set[str] = set()
        self.checks_after_lost = 0

        @contextmanager
        def fake_holding(*args: Any, **kwargs: Any) -> Iterator[Fleet]:
            yield self.fleet

        monkeypatch.setattr(rollout_run, "holding", fake_holding)
        monkeypatch.setattr(rollout_run, "run_pyinfra_streamed", self.pyinfra)
        monkeypatch.setattr(rollout_run, "check_health", self.health)

    def pyinfra(
        self, inventory: str, data: Sequence[str], env: Any, *, limit: Sequence[str] = ()
    ) -> PyinfraRun:
        items = dict(item.partition("=")[::2] for item in data)
        release = NEW if "artifact" in items else items["rollback"]
        self.runs.append((release, list(limit)))
        outcomes = {}
        for host in limit:
            before, self.serving[host] = self.serving[host], release
            outcomes[host] = HostOutcome(
                host, "deploy", release, SERVED, serving=release, previous=before
            )
        self.during_step(list(limit))
        return PyinfraRun(0, [], outcomes)

    def health(self, url: str, *args: Any) -> tuple[bool, str]:
        if self.fleet.lost:
            self.checks_after_lost += 1
            assert self.checks_after_lost < 20, "still watching hosts after a lease was lost"
        bad = [h for h in self.unhealthy if h in self.serving and self.serving[h] == NEW]
        return (False, "HTTP 500") if any(h in url for h in bad) else (True, "HTTP 200")

    def rollout(self, wait_s: float | None = None) -> rollout_run.Outcome:
        said: list[str] = []
        r = Rollout(
            inventory="inv.py",
            artifact=Path("release.tar.gz"),
            release=NEW,
            lock_hash="h",
            data=[],
            env={},
            health=Health(1, 0, 1, None),
            wait_s=wait_s,
            say=said.append,
        )
        self.said = said
        return run_rollout(r)


@pytest.fixture
def hosts(monkeypatch: pytest.MonkeyPatch) -> FakeFleet:
    return FakeFleet(monkeypatch)


def lose(fake: FakeFleet, host: str) -> Callable[[list[str]], None]:
    def during(step: list[str]) -> None:
        fake.fleet.lost.setdefault(host, WHY)

    return during


def test_a_lease_lost_during_the_canary_stops_before_the_next_step(hosts: FakeFleet) -> None:
    hosts.during_step = lose(hosts, "host-d")  # the holder says LOST while the canary runs
    out = hosts.rollout()
    assert hosts.serving == {"host-a": NEW, "host-b": OLD, "host-c": OLD, "host-d": OLD}
    assert out.code == exitcodes.EXIT_DEPLOY
    assert "the rollout's lock on host-d was lost: " + WHY in out.message
    assert "stopped before batch 1, nothing more changed" in out.message
    outcomes = {r.host: r.outcome for r in out.results}
    assert outcomes == {"host-a": report.UPDATED, **dict.fromkeys(HOSTS[1:], report.NOT_REACHED)}


def test_a_lease_lost_before_a_switch_back_changes_no_host_and_exits_16(hosts: FakeFleet) -> None:
    # Batch 1 (host-b, host-c) fails its outside health check on host-c; while it ran, the
    # holder lost host-a's lease: host-a may be another deploy's now, and nothing switches back.
    hosts.unhealthy = {"host-c"}
    hosts.during_step = lambda step: "host-b" in step and lose(hosts, "host-a")(step)
    out = hosts.rollout()
    assert hosts.runs == [(NEW, ["host-a"]), (NEW, ["host-b", "host-c"])]  # no rollback run
    assert hosts.serving == {"host-a": NEW, "host-b": NEW, "host-c": NEW, "host-d": OLD}
    assert out.code == exitcodes.EXIT_SWITCH_BACK_FAILED
    assert out.message.startswith("host-c: HTTP 500; the rollout's lock on host-a was lost")
    assert "stopped before switching back host-a, host-b, host-c" in out.message
    details = {r.host: r.detail for r in out.results}
    assert details["host-a"] == "not switched back: a lock was lost"


def test_a_lease_lost_while_watching_ends_the_watch_and_the_rollout(hosts: FakeFleet) -> None:
    hosts.during_step = lose(hosts, "host-b")
    out = hosts.rollout(wait_s=3600)  # a bake time this test would never outlive
    assert hosts.serving == {"host-a": NEW, "host-b": OLD, "host-c": OLD, "host-d": OLD}
    assert out.code == exitcodes.EXIT_DEPLOY and "lock on host-b was lost" in out.message


def test_a_rollout_without_a_lost_lease_reaches_every_host(hosts: FakeFleet) -> None:
    out = hosts.rollout()
    assert hosts.serving == dict.fromkeys(HOSTS, NEW) and out.code == exitcodes.EXIT_OK


FAKE_HOLDER = """
import sys
print("SETTINGS {}", flush=True)
print("HELD", flush=True)
print("LOST host-b\\tits lock is not the rollout's any more", flush=True)
sys.stdin.read()
open(sys.argv[1], "w").write("released")
print("RELEASED", flush=True)
"""


def test_the_holders_lost_line_after_held_reaches_the_rollout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "released"
    monkeypatch.setattr(fleetlock, "HOLDER", [sys.executable, "-c", FAKE_HOLDER, str(marker)])
    with holding("inv.py", "tok", "r1", [], [], dict(os.environ)) as fleet:
        deadline = time.monotonic() + 60  # a guard, not a timing assertion
        while not fleet.lost and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fleet.lost == {"host-b": "its lock is not the rollout's any more"}
        assert fleet.lost_lock() == (
            "the rollout's lock on host-b was lost: its lock is not the rollout's any more"
        )
        assert not marker.exists()
    assert marker.read_text() == "released"  # its stdin closed: it released
