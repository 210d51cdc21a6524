"""Keeping the deploy lock's lease (ai_deploy.host.release.lock) renewed while the gate works.

`LeasedRemote` wraps the Remote the gate uses. Every command renews the lease when a renewal is
due (a guarded `touch` run before the command, in the same round trip), and a command that may
run longer than the renewal interval (it says so with `timeout=`) runs beside a host-side loop
that renews on its own, so a long `uv sync` cannot starve the lease. A renewal that finds
the lock no longer ours (another deploy took it over after our lease ran out) does not run the
command: the deploy stops with a "lock" failure instead of working beside another one."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.release.lock import LEASE_FILE, guard_path, token_needle
from ai_deploy.host.remote import Remote, Result
from ai_deploy.host.settings import Spec

LOST = "ai-deploy: lease-lost"  # on stderr when a renewal finds the lock is not ours
SKIPPED = "ai-deploy: lease-guard-busy"  # on stderr when a renewal could not take the guard
RENEWALS_PER_LEASE = 6  # renewal interval: lock_lease_s / this (30 s for the default 180 s)


def renew_script(spec: Spec, token: str) -> str:
    """Renew the lease held with TOKEN; exits 97 with LOST on stderr when it is not ours. A
    guard that stays taken skips this renewal (SKIPPED on stderr: the lease was not renewed, the
    next try comes soon) rather than failing."""
    lock = spec.layout.lock
    return (
        f"( flock -w 5 9 || {{ echo {shlex.quote(SKIPPED)} >&2; exit 0; }}; "
        f"if grep -qF -- {shlex.quote(token_needle(token))} {lock}/info 2>/dev/null; "
        f"then touch {lock}/{LEASE_FILE}; else echo {shlex.quote(LOST)} >&2; exit 97; fi ) "
        f"9>>{guard_path(spec.layout)}"
    )


def keep_renewed(spec: Spec, token: str, script: str, every_s: float) -> str:
    """SCRIPT, run while a loop on the host renews the lease every EVERY_S seconds; the loop
    ends with SCRIPT (or with the shell running it), and its output never reaches ours."""
    return (
        f"( while sleep {every_s:g}; do kill -0 $$ 2>/dev/null || exit 0; "
        f"{renew_script(spec, token)} || exit 0; done ) </dev/null >/dev/null 2>&1 &\n"
        "_ai_deploy_lease=$!\n"
        f"(\n{script}\n)\n"
        "_ai_deploy_rc=$?\n"
        "kill $_ai_deploy_lease 2>/dev/null\n"
        "exit $_ai_deploy_rc\n"
    )


class LeasedRemote:
    """A Remote whose commands keep the lease of lock TOKEN renewed (see the module's doc).

    Guarantees: the lease is renewed at least every lock_lease_s / RENEWALS_PER_LEASE seconds
    of the gate's work, provided every command that may run longer than that passes a
    `timeout=` above that interval; once the lock is found to be someone else's, no command
    runs and each `run` raises DeployFailed("lock")."""

    def __init__(
        self,
        remote: Remote,
        spec: Spec,
        token: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = remote
        self.spec = spec
        self.token = token
        self.clock = clock
        self.every_s = spec.lock_lease_s / RENEWALS_PER_LEASE
        self.renewed_at = clock()  # acquire_lock has just written the lease
        self.lost = False

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        if self.lost:
            raise self._lost()
        if timeout is not None and timeout > self.every_s:
            script = keep_renewed(self.spec, self.token, script, self.every_s)
        due = self.clock() - self.renewed_at >= self.every_s
        if due:
            script = f"{renew_script(self.spec, self.token)} || exit 97\n{script}"
        result = self.inner.run(script, timeout=timeout)
        if due:
            if LOST in result.stderr:
                self.lost = True
                raise self._lost()
            if SKIPPED not in result.stderr:
                self.renewed_at = self.clock()
        return result

    def renew(self) -> None:
        """Renew now, whatever is due (raises DeployFailed("lock") when the lock is lost)."""
        self.renewed_at = self.clock() - self.every_s
        self.run("true")

    def _lost(self) -> DeployFailed:
        return DeployFailed(
            "lock",
            f"this deploy lost the lock of {self.spec.app_root}: its lease was not renewed for "
            f"lock_lease_s ({self.spec.lock_lease_s:.0f} s) and another deploy took it over; "
            "stopped here so that two deploys never change the host at once",
        )

    def say(self, message: str) -> None:
        self.inner.say(message)

    def warn(self, message: str) -> None:
        self.inner.warn(message)
