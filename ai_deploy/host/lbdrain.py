"""Draining one host from its load balancer around a stop or switch of its service (lb_drain).

The load balancer checks lb_health_path, which nginx answers from a flag file the deploy sets
(ai_deploy.host.paths.Layout.lb_drained): `take_out` sets it, waits lb_drain_wait_s for the load
balancer to see the host down (only when it was in service: a host already answering 503 is
not sent traffic), then waits for the requests in flight on the app's port to finish, bounded
by drain_timeout_s. `put_back` clears it once a release passed the health gate and waits
lb_drain_wait_s for the load balancer to send traffic again. A host that ends unhealthy is
never put back: it keeps answering 503. With lb_drain off both do nothing.

The flag names the rollout that set it (`flag_text`): a deploy stopped by a signal while a host
is drained clears it afterwards (`undrain_script`, from ai_deploy.commands.lock), so the host is
not left out of rotation; nginx then answers lb_health_path with the app's own health, so a host
that was stopped mid-restart only comes back once its app answers."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from ai_deploy.host.drain import Drained, wait_drained
from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec

IN_SERVICE, DRAINED, NOT_READY = "in service", "drained", "not ready"


def lb_health_script(spec: Spec) -> str:
    """Shell that prints the status and first word of lb_health_path's answer on the host
    ("000" when nothing answers)."""
    url = shlex.quote(f"http://{_local(spec.app_host)}:{spec.lb_health_port}{spec.lb_health_path}")
    return f"curl -s -m 3 -o - -w ' %{{http_code}}' {url} 2>/dev/null | tail -c 40; true"


def _local(app_host: str) -> str:
    """Where nginx answers on the host itself: loopback when it listens on every address."""
    if app_host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{app_host}]" if ":" in app_host else app_host


def parse_lb_health(lines: list[str]) -> tuple[int, str]:
    """(status, state) from lb_health_script's output: 200 is in service, a 503 saying
    "drained" is drained, anything else not ready."""
    text = " ".join(lines).strip()
    code_text = text.rsplit(" ", 1)[-1] if text else ""
    code = int(code_text) if code_text.isdigit() else 0
    if code == 200:
        return code, IN_SERVICE
    return code, DRAINED if code == 503 and "drained" in text else NOT_READY


def flag_text(token: str | None) -> str:
    """What the drain flag holds: the rollout that set it (its lock token), when there is one."""
    return f"drained by {token}" if token else "drained"


def undrain_script(flag: str, token: str) -> str:
    """Shell that removes the drain flag FLAG only when rollout TOKEN set it (prints UNDRAINED):
    a flag another rollout set, or one set without a rollout, is left alone."""
    return (
        f'if [ "$(cat {shlex.quote(flag)} 2>/dev/null)" = {shlex.quote(flag_text(token))} ]; '
        f"then rm -f {shlex.quote(flag)} && echo UNDRAINED; fi; true"
    )


def lb_health(remote: Remote, spec: Spec) -> tuple[int, str]:
    return parse_lb_health(remote.run(lb_health_script(spec)).stdout)


@dataclass(frozen=True)
class TakenOut:
    """What taking the host out did: whether it was in service, the requests it waited for."""

    was_in_service: bool
    in_flight: Drained | None


def in_flight_message(drained: Drained | None, port: int) -> str:
    if drained is None:
        return f"could not count the requests in flight on port {port} (no `ss`)"
    if not drained.open_at_switch:
        return "no request in flight"
    if drained.still_open:
        return (
            f"{drained.open_at_switch} request(s) in flight, {drained.still_open} still open "
            f"after drain_timeout_s ({drained.seconds:.1f} s): the stop cuts them"
        )
    return f"{drained.open_at_switch} request(s) in flight, finished in {drained.seconds:.1f} s"


def take_out(
    remote: Remote, spec: Spec, port: int, *, sleep: Callable[[float], None] = time.sleep
) -> TakenOut | None:
    """Drain the host (lb_health_path answers 503), wait for the load balancer to see it, then
    for the requests in flight on local PORT (the app's); None when lb_drain is off."""
    if not spec.lb_drain:
        return None
    code, _ = lb_health(remote, spec)
    flag = shlex.quote(spec.layout.lb_drained)
    result = remote.run(f"printf '%s\\n' {shlex.quote(flag_text(spec.lock_token))} > {flag}")
    if not result.ok:
        raise DeployFailed("drain", f"could not drain the host: writing {flag} failed")
    wait = spec.lb_drain_wait_s
    if code == 200:
        remote.say(f"drained from the load balancer; waiting {wait:g} s")
        sleep(wait)
    else:
        remote.say(
            f"drained from the load balancer (it was not in service: {spec.lb_health_path} "
            f"answered {code or 'nothing'}), no wait"
        )
    drained = wait_drained(remote, port, spec.drain_timeout_s, sleep=sleep)
    remote.say(in_flight_message(drained, port))
    return TakenOut(code == 200, drained)


def put_back(remote: Remote, spec: Spec, *, sleep: Callable[[float], None] = time.sleep) -> None:
    """Clear the drain (the release passed the gate) and wait for the load balancer to send
    traffic again; nothing when lb_drain is off."""
    if not spec.lb_drain:
        return
    remote.run(f"rm -f {shlex.quote(spec.layout.lb_drained)}")
    code, state = lb_health(remote, spec)
    if state != IN_SERVICE:
        remote.warn(
            f"{spec.lb_health_path} answers {code or 'nothing'} after the drain was cleared: "
            "the load balancer keeps the host out until it answers 200"
        )
    wait = spec.lb_drain_wait_s
    sleep(wait)
    remote.say(f"back in service after {wait:g} s")
