"""The rollout's lock holder (ai_deploy.rollout.holder) over several hosts, each a temporary
tree whose lock shell runs for real (hostkit): every lease renewed concurrently, a host that
stops answering reported lost at once on the holder's stdout while the others stay renewed,
and a lease taken over by another deploy reported lost too."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hostkit import FakeHost

from ai_deploy.host.release.lock import acquire_lock
from ai_deploy.host.remote import Result
from ai_deploy.inventory import Reached
from ai_deploy.rollout import holder
from ai_deploy.rollout.leases import FleetLeases, HeldLock

pytestmark = pytest.mark.unit

LEASE_S = 3.0  # renewals every 0.5 s, each call bounded to 0.75 s, lost after 2.25 s unconfirmed
TOKEN = "rollout-0123456789abcdef"
GUARD_S = 60.0  # how long a test waits for a line before it gives up (not a timing assertion)


class HostRemote:
    """A host of the inventory as the holder sees it (name, data, run), whose commands can be
    made to block, as on a host that stops answering mid-rollout: for ever (SILENT), or until
    their timeout, then raising as pyinfra does (SILENT_BOUNDED)."""

    def __init__(self, name: str, fake: FakeHost) -> None:
        self.name = name
        self.fake = fake
        self.data = fake.data(lock_lease_s=LEASE_S)
        self.silent = threading.Event()
        self.silent_bounded = threading.Event()
        self.answer_again = threading.Event()

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        if self.silent.is_set():
            self.answer_again.wait()
        if self.silent_bounded.is_set() and not self.answer_again.wait(timeout):
            raise TimeoutError()
        return self.fake.remote.run(script, timeout=timeout)

    def say(self, message: str) -> None:
        self.fake.remote.say(message)

    def warn(self, message: str) -> None:
        self.fake.remote.warn(message)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, HostRemote]]:
    with ExitStack() as stack:
        hosts = {}
        for name in ("host-a", "host-b", "host-c"):
            (tmp_path / name).mkdir()
            fake = stack.enter_context(FakeHost(tmp_path / name))
            hosts[name] = HostRemote(name, fake)
        yield hosts
        for h in hosts.values():
            h.answer_again.set()  # let blocked threads end


def lock_of(h: HostRemote) -> Path:
    return h.fake.app_root / ".deploy.lock"


def lease_age(h: HostRemote) -> float:
    return time.time() - (lock_of(h) / "lease").stat().st_mtime


class Holder:
    """holder.main in a thread, its stdin and stdout pipes, its lines in a queue."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hosts: dict[str, HostRemote]) -> None:
        @contextmanager
        def connected_partly(inventory: str, data: Any) -> Iterator[Reached]:
            names = list(hosts)
            yield Reached(list(hosts.values()), {}, names, {n: "127.0.0.1" for n in names})

        monkeypatch.setattr(holder, "connected_partly", connected_partly)
        stdin_r, self.stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        monkeypatch.setattr(sys, "stdin", os.fdopen(stdin_r, "r"))
        monkeypatch.setattr(sys, "stdout", os.fdopen(stdout_w, "w"))
        self.lines: queue.Queue[str] = queue.Queue()
        self.exit: list[int] = []
        out = os.fdopen(stdout_r, "r")
        threading.Thread(target=lambda: [self.lines.put(x.rstrip("\n")) for x in out]).start()
        self.thread = threading.Thread(
            target=lambda: self.exit.append(holder.main(["inv.py", "hold", TOKEN, "r1", ""]))
        )
        self.thread.start()

    def ended(self) -> int | None:
        self.thread.join(timeout=GUARD_S)
        return self.exit[0] if self.exit else None

    def next_line(self) -> str:
        return self.lines.get(timeout=GUARD_S)

    def until(self, word: str) -> list[str]:
        seen = [self.next_line()]
        while not seen[-1].startswith(word):
            seen.append(self.next_line())
        return seen

    def close(self) -> None:
        os.close(self.stdin_w)
        self.thread.join(timeout=GUARD_S)
        sys.stdout.close()


def test_a_silent_host_is_reported_lost_at_once_and_the_others_stay_renewed(
    monkeypatch: pytest.MonkeyPatch, fleet: dict[str, HostRemote]
) -> None:
    a, b, c = fleet.values()
    run = Holder(monkeypatch, fleet)
    assert run.until("HELD")[-1] == "HELD"
    assert all(lock_of(h).is_dir() for h in fleet.values())
    b.silent.set()  # host-b stops answering: its renewal call blocks
    lost: list[str] = []
    seen_after_lost = 0
    while seen_after_lost < 3:  # sample until host-b is lost, then over one more lease
        try:
            line = run.lines.get(timeout=LEASE_S / 6)
            if line.startswith("LOST "):
                lost.append(line)
        except queue.Empty:
            pass
        for h in (a, c):
            assert lease_age(h) < LEASE_S, f"{h.name}'s lease ran out while {b.name} was silent"
        seen_after_lost += 1 if lost else 0
        assert not run.exit, run.exit
    assert len(lost) == 1 and lost[0].startswith("LOST host-b\t"), lost
    assert "was not renewed for" in lost[0] and "does not answer" in lost[0]
    # The rollout ends: the answering hosts' locks go at once; host-b's stays to run out.
    run.close()
    assert run.exit == [0]
    assert run.until("RELEASED")[-1] == "RELEASED"
    assert not lock_of(a).exists() and not lock_of(c).exists()
    assert lock_of(b).is_dir()


def test_a_host_silent_while_the_locks_are_taken_ends_the_holder_and_drops_the_others(
    monkeypatch: pytest.MonkeyPatch, fleet: dict[str, HostRemote]
) -> None:
    a, b, c = fleet.values()
    c.silent_bounded.set()  # host-c answers nothing from the start; each call gives up
    run = Holder(monkeypatch, fleet)
    said = run.until("UNREACHABLE")
    assert said[-1].startswith("UNREACHABLE host-c\tno answer within 1 s while taking its lock")
    assert run.ended() == 4
    assert not lock_of(a).exists() and not lock_of(b).exists()


def take(h: HostRemote, token: str = TOKEN) -> HeldLock:
    spec = h.fake.spec("r1", lock_lease_s=LEASE_S)
    taking = time.monotonic()
    acquire_lock(h.fake.remote, spec, token=token)
    return HeldLock(h.name, h, spec, renewed_at=taking)


def test_a_lease_taken_over_is_reported_lost_and_the_others_kept(
    fleet: dict[str, HostRemote],
) -> None:
    a, b, c = fleet.values()
    said: queue.Queue[tuple[str, str]] = queue.Queue()
    leases = FleetLeases(TOKEN, LEASE_S, lambda host, why: said.put((host, why)))
    for h in (a, b, c):
        leases.add(take(h))
    # Another deploy has host-c's lock now (its lease ran out and was taken over).
    (lock_of(c) / "info").write_text('{"token": "rollout-0123456789abcdef0"}\n')
    try:
        host, why = said.get(timeout=GUARD_S)
        assert host == "host-c" and "not the rollout's any more" in why
        for _ in range(4):
            time.sleep(LEASE_S / 6)
            assert lease_age(a) < LEASE_S and lease_age(b) < LEASE_S
        assert said.empty() and leases.lost() == {"host-c": why}
    finally:
        leases.release()
    assert not lock_of(a).exists() and not lock_of(b).exists()
    assert (lock_of(c) / "info").read_text() == '{"token": "rollout-0123456789abcdef0"}\n'
