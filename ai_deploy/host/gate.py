"""The whole change on one host, in order: take the lock, prepare the release, let the strategy
put it live (with its own switch-back), journal the outcome, prune; the lock's lease is renewed
by every step's commands (ai_deploy.host.release.lease) and the lock is dropped on every way out.
The result is a `HostOutcome`, never a message to parse."""

from __future__ import annotations

import time

from ai_deploy.host import strategies
from ai_deploy.host.outcome import (
    FAILED,
    SERVED,
    SWITCH_BACK_FAILED,
    SWITCHED_BACK,
    DeployFailed,
    HostOutcome,
)
from ai_deploy.host.page_cache import warm_model_files
from ai_deploy.host.release.journal import mark_healthy, record
from ai_deploy.host.release.laststart import record_last_start
from ai_deploy.host.release.lease import LeasedRemote
from ai_deploy.host.release.links import read_links
from ai_deploy.host.release.lock import acquire_lock, release_lock
from ai_deploy.host.release.models import check_after_failed_start
from ai_deploy.host.release.prepare import prepare_release
from ai_deploy.host.release.prune import prune
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec


def put_in_service(remote: Remote, spec: Spec, *, host: str, have_release: bool) -> HostOutcome:
    """Put SPEC.release_id in service on the host behind REMOTE; never raises DeployFailed."""
    started = time.monotonic()
    strategy = strategies.get(spec.strategy)
    previous = None

    def outcome(status: str, **kw: object) -> HostOutcome:
        return HostOutcome(
            host=host,
            action=spec.action,
            release=spec.release_id,
            status=status,
            previous=previous,
            seconds=round(time.monotonic() - started, 3),
            **kw,  # type: ignore[arg-type]
        )

    try:
        token = acquire_lock(remote, spec)
    except DeployFailed as exc:
        return outcome(exc.status, phase=exc.phase, reason=str(exc))
    plain, remote = remote, LeasedRemote(remote, spec, token)
    try:
        before = read_links(remote, spec)
        previous = before.current
        prepare_release(remote, spec, token, have_release)
        warm_model_files(remote, spec)  # while the old release still serves
        keep = set(strategy.units(spec.layout))

        def leave_others() -> None:
            for other in strategies.others(strategy.name):
                other.leave(remote, spec, keep)

        live = strategy.go_live(remote, spec, before, leave_others)
        mark_healthy(remote, spec)
        if live.start is not None:
            record_last_start(remote, spec, live.start)
        record(remote, spec, "ok", live.journal)
        prune(remote, spec)
    except DeployFailed as exc:
        if exc.status in (SWITCHED_BACK, SWITCH_BACK_FAILED):
            check_after_failed_start(remote, spec)  # a damaged model file is fetched again
        if exc.journal:
            record(plain, spec, "failed", exc.journal)  # also when the lease was lost
        serving = exc.serving if exc.status != FAILED else None
        return outcome(exc.status, phase=exc.phase, reason=str(exc), serving=serving)
    finally:
        release_lock(plain, spec, token)
    remote.say(live.summary)
    return outcome(SERVED, serving=spec.release_id)
