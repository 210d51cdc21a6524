"""The rollout's leases (ai_deploy.host.release.lock), kept renewed on every host at once by the
lock holder (ai_deploy.rollout.holder).

Each host has its own renewal thread: every lock_lease_s / RENEWALS_PER_LEASE it renews, each
call bounded to lock_lease_s / BOUND_FRACTION, so a host that stops answering delays no other
host's renewal. A host is reported lost, once and at once, when a renewal finds the lock is not
the rollout's any more, or when no renewal was confirmed for lock_lease_s minus that bound:
before any rival could judge the lease stale and take it over. A lease is renewed from the
moment its lock is taken, while the next hosts' are taken; taking and reading go through
`BoundedRemote`, and releasing is concurrent, each bounded the same way, so one silent host
cannot hold up the others.

Under the holder, pyinfra has patched the standard library with gevent: these threads are
greenlets, and every wait in them lets the others run."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ai_deploy.host.release.lease import LOST, RENEWALS_PER_LEASE, SKIPPED, renew_script
from ai_deploy.host.release.lock import release_script
from ai_deploy.host.settings import Spec

BOUND_FRACTION = 4  # one call may take at most lock_lease_s / this (45 s for the default 180 s)


@dataclass
class HeldLock:
    """One host's lock that the rollout holds."""

    name: str
    remote: Any  # ai_deploy.host.remote.Remote
    spec: Spec
    renewed_at: float  # when the lease was last written: taken, or a confirmed renewal sent
    lost: str | None = None


class FleetLeases:
    """Every lease `add`ed renewed concurrently until `release` (LEASE_S: the shortest
    lock_lease_s among them); ON_LOST(name, why) is called once per host whose lease is lost
    (see the module's doc), from a renewal or watch thread."""

    def __init__(
        self,
        token: str,
        lease_s: float,
        on_lost: Callable[[str, str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.held: list[HeldLock] = []
        self.token = token
        self.on_lost = on_lost
        self.clock = clock
        self.every_s = lease_s / RENEWALS_PER_LEASE
        self.bound_s = lease_s / BOUND_FRACTION
        self.at_risk_s = lease_s - self.bound_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True).start()

    def add(self, h: HeldLock) -> None:
        """Keep H's lease renewed from now on, counted from H.renewed_at."""
        with self._lock:
            self.held.append(h)
        threading.Thread(target=self._keep, args=(h,), daemon=True).start()

    def _keep(self, h: HeldLock) -> None:
        next_at = self.clock() + self.every_s
        while not self._stop.wait(max(0.0, next_at - self.clock())) and h.lost is None:
            sent = self.clock()
            next_at = sent + self.every_s
            try:
                result = h.remote.run(renew_script(h.spec, self.token), timeout=self.bound_s)
            except Exception:  # no answer within the bound, a dropped connection: try again
                continue
            if LOST in result.stderr:
                self._lose(h, "its lock is not the rollout's any more (taken over, or released)")
                return
            if result.ok and SKIPPED not in result.stderr:
                with self._lock:
                    h.renewed_at = max(h.renewed_at, sent)

    def _watch(self) -> None:
        every = min(1.0, self.every_s / 4)
        while not self._stop.wait(every):
            with self._lock:
                held = list(self.held)
            for h in held:
                unconfirmed = self.clock() - h.renewed_at
                if h.lost is None and unconfirmed >= self.at_risk_s:
                    self._lose(
                        h,
                        f"its lease was not renewed for {unconfirmed:.0f} s (the host does not "
                        f"answer; lock_lease_s is {h.spec.lock_lease_s:.0f} s, after which "
                        "another deploy may take it over)",
                    )

    def _lose(self, h: HeldLock, why: str) -> None:
        with self._lock:
            if h.lost is not None or self._stop.is_set():
                return
            h.lost = why
        with contextlib.suppress(OSError):  # a reader that is gone stops no renewal
            self.on_lost(h.name, why)

    def lost(self) -> dict[str, str]:
        """The hosts whose lease is lost so far, with why."""
        with self._lock:
            return {h.name: h.lost for h in self.held if h.lost is not None}

    def release(self, also: Sequence[HeldLock] = ()) -> None:
        """Stop renewing and drop every lock still the rollout's (and ALSO's: a host whose
        taking had no answer), all hosts at once, each bounded (a host that does not answer
        keeps its lock until its lease runs out)."""
        self._stop.set()
        with self._lock:
            held = [*self.held, *also]
        release_all(held, self.token, self.bound_s)


def release_all(held: Sequence[HeldLock], token: str, bound_s: float) -> None:
    """Drop each lock of HELD that still has TOKEN, concurrently, each within BOUND_S."""

    def drop(h: HeldLock) -> None:
        try:
            h.remote.run(release_script(h.spec.layout, token=token), timeout=bound_s)
        except Exception:  # left to run out: the lease is no longer renewed
            return

    threads = [threading.Thread(target=drop, args=(h,), daemon=True) for h in held]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + bound_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


class BoundedRemote:
    """REMOTE with every command bounded to BOUND_S (pyinfra raises when it passes), for the
    steps whose callers pass no timeout: taking the locks, reading the hosts."""

    def __init__(self, remote: Any, bound_s: float) -> None:
        self.inner = remote
        self.bound_s = bound_s

    def __getattr__(self, attr: str) -> Any:  # name, data, say, warn: the host's own
        return getattr(self.inner, attr)

    def run(self, script: str, *, timeout: float | None = None) -> Any:
        return self.inner.run(script, timeout=min(timeout or self.bound_s, self.bound_s))
