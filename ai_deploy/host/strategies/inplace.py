"""The change shared by the in-place strategies (restart, socket): switch `current`, stop the
one service looking at the connections it holds (drain_mode), restart it behind the health
gate, and on failure switch back to the previous release, which must be healthy again. With
lb_drain the host is drained from the load balancer first and put back only once a release
passed the gate (ai_deploy.host.lbdrain); one that ends unhealthy stays drained."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from ai_deploy.host import lbdrain
from ai_deploy.host.drain import stop_draining
from ai_deploy.host.outcome import SWITCH_BACK_FAILED, SWITCHED_BACK, DeployFailed
from ai_deploy.host.release.health import Health, wait_healthy, warn_unhealthy
from ai_deploy.host.release.links import Links, set_links
from ai_deploy.host.release.venv import ensure_release_venv
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec
from ai_deploy.host.strategies import front
from ai_deploy.host.strategies.base import Live


def _restart_healthy(remote: Remote, spec: Spec, restart: Callable[[], int]) -> Health:
    """RESTART, then the health gate; a restart systemd refuses is an unhealthy release too
    (so it is switched back like one)."""
    try:
        baseline = restart()
    except DeployFailed as exc:
        return Health(False, str(exc))
    return wait_healthy(remote, spec, baseline, port=front.app_port(spec))


def go_live_in_place(
    remote: Remote, spec: Spec, before: Links, restart: Callable[[], int], name: str
) -> Live:
    """RESTART brings the host's units to the strategy and restarts the service, returning its
    restart counter afterwards (for the health gate)."""
    target = spec.release_id
    lbdrain.take_out(remote, spec, front.app_port(spec))
    set_links(remote, spec, before.after_switch_to(target))
    stopped = stop_draining(
        remote,
        spec.service,
        front.app_port(spec),
        timeout_s=spec.drain_timeout_s,
        mode=spec.drain_mode,
    )
    if stopped is not None:
        remote.say(stopped.message(spec.service, spec.drain_mode))
    remote.say(f"current -> releases/{target}; restarting {spec.service} ({name})")
    health = _restart_healthy(remote, spec, restart)
    if health.ok:
        remote.say(health.reason)
        lbdrain.put_back(remote, spec)
        drained = f" {stopped.journal}" if stopped and stopped.open_at_stop else ""
        return Live(
            f"{spec.action} of {target} healthy", f"previous={before.current or '-'}{drained}"
        )
    warn_unhealthy(remote, spec, health)
    if before.current == target and target in before.healthy:
        raise DeployFailed(
            "health",
            f"{spec.action} of {target} failed after the restart: {health.reason}; the release "
            "did not change, so there is nothing to switch back to (check the unit and .env)",
            journal=f"reason={health.reason!r}",
        )
    back_to = before.switch_back(target)
    if back_to is None:
        # No release that passed the gate to go back to, so none is left in service. The
        # socket is disabled too: at boot it would accept connections nothing answers.
        layout = spec.layout
        units = f"{shlex.quote(layout.service)} {shlex.quote(layout.socket)}"
        remote.run(
            f"systemctl stop {units} 2>/dev/null; "
            f"systemctl disable {shlex.quote(layout.socket)} 2>/dev/null; true"
        )
        set_links(remote, spec, Links(None, None, before.healthy))
        raise DeployFailed(
            "health",
            f"{spec.action} of {target} failed: {health.reason}; there is no previous release "
            "that passed the health gate to go back to, so the service is stopped",
            journal=f"no-previous-release reason={health.reason!r}",
        )
    remote.warn(f"switching back to release {back_to.current}")
    try:
        ensure_release_venv(remote, spec, back_to.current)  # verified, or rebuilt first
    except DeployFailed as exc:
        raise DeployFailed(
            "rollback",
            f"{spec.action} of {target} failed ({health.reason}) and the venv of the previous "
            f"release {back_to.current} could not be rebuilt: {exc}",
            status=SWITCH_BACK_FAILED,
            journal=f"rollback-to={back_to.current} venv-failed",
        ) from exc
    set_links(remote, spec, back_to)
    back = _restart_healthy(remote, spec, restart)
    if not back.ok:
        raise DeployFailed(
            "rollback",
            f"{spec.action} of {target} failed ({health.reason}) and the previous release "
            f"{back_to.current} is not healthy either: {back.reason}",
            status=SWITCH_BACK_FAILED,
            journal=f"rollback-to={back_to.current} also-unhealthy",
        )
    remote.say(f"release {back_to.current} serves again: {back.reason}")
    lbdrain.put_back(remote, spec)
    raise DeployFailed(
        "health",
        f"{spec.action} of {target} failed: {health.reason}; rolled back to {back_to.current}, "
        "which is healthy",
        status=SWITCHED_BACK,
        serving=back_to.current,
        journal=f"rolled-back-to={back_to.current} reason={health.reason!r}",
    )
