"""bluegreen: ai-server@blue and ai-server@green on internal ports behind nginx on the public
port. The idle colour starts the release and must pass the health gate on its own port before
nginx is pointed at it (graceful reload); the old colour then drains and stops. A release that
never turns healthy never receives a request. The GPU holds two copies of the model meanwhile;
on a GPU host where two do not fit (ai_deploy.host.gpu_memory), the live colour stops before the
idle one starts (gpu_memory_when_short="restart": requests fail while it loads) or the deploy
stops before anything changes ("refuse")."""

from __future__ import annotations

import shlex
import time
from io import StringIO
from typing import Any, NoReturn

from ai_deploy.host import gpu_memory, lbdrain
from ai_deploy.host.drain import Drained, wait_drained
from ai_deploy.host.facts import AppTree
from ai_deploy.host.outcome import FAILED, SWITCH_BACK_FAILED, SWITCHED_BACK, DeployFailed
from ai_deploy.host.paths import COLOURS, LB_FRONT_MARK, Layout
from ai_deploy.host.release.health import (
    Health,
    restart_service,
    wait_healthy,
    warn_unhealthy,
)
from ai_deploy.host.release.links import Links, set_links
from ai_deploy.host.release.venv import ensure_release_venv
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec
from ai_deploy.host.strategies.base import Leave, Live, UnitFile, must
from ai_deploy.host.strategies.nginx import nginx_installed, site_rendered

name = "bluegreen"
keeps_serving = True  # the old colour serves until the new one is ready


def unit_files(data: Any) -> list[UnitFile]:
    return [UnitFile("ai-server@.service.j2", f"{data.app_name}@.service")]


def units(layout: Layout) -> list[str]:
    return [layout.colour_template]


def boot_units(layout: Layout) -> list[str]:
    # nginx and the live colour are enabled when traffic moves to a healthy release.
    return []


def prepare_host(data: Any) -> None:
    """nginx from the distribution, our site (not yet enabled), the colours' ports."""
    from pyinfra import host
    from pyinfra.facts.files import File
    from pyinfra.operations import files

    blue_port, green_port = (int(p) for p in data.bluegreen_ports)
    nginx_installed(data)
    upstream = data.bluegreen_upstream
    if not host.get_fact(File, path=upstream):
        files.put(
            name="Ensure the blue/green upstream file exists",
            src=StringIO(f"server 127.0.0.1:{blue_port};\n"),
            dest=upstream,
            mode="644",
        )
    site_rendered(data, front=None, what="blue/green")
    files.directory(
        name="Ensure the colours directory exists",
        path=f"{data.app_root}/colors",
        user=data.code_owner,
        group=data.code_owner,
        mode="755",
    )
    files.put(
        name=f"Ensure blue listens on {blue_port} and green on {green_port}",
        src=StringIO(f"blue_PORT={blue_port}\ngreen_PORT={green_port}\n"),
        dest=f"{data.app_root}/colors/ports.env",
        mode="644",
    )


def is_steady(tree: AppTree, layout: Layout) -> bool:
    active = tree.active_units()
    live = layout.colour_unit(tree.live) if tree.live else ""
    return (
        tree.nginx_site
        and live in active
        and "nginx.service" in active
        and layout.service not in active
        and layout.socket not in active
        and not tree.lb_front
    )


def live_colour(remote: Remote, spec: Spec) -> str | None:
    out = remote.run(f"cat {spec.layout.colors}/LIVE 2>/dev/null || true").stdout
    colour = out[0].strip() if out else ""
    return colour if colour in COLOURS else None


def _point_colour(remote: Remote, spec: Spec, colour: str, release: str) -> None:
    colors = spec.layout.colors
    must(
        remote,
        f"mkdir -p {colors} && ln -sfn ../releases/{shlex.quote(release)} {colors}/.{colour}.tmp "
        f"&& mv -T {colors}/.{colour}.tmp {colors}/{colour}",
        f"pointing the {colour} colour at {release}",
    )


def _stage_route(remote: Remote, spec: Spec, colour: str, port: int) -> None:
    """Our site enabled with its upstream at COLOUR's port, and nginx's config test passed. A
    config nginx refuses is put back as it was, so no later reload routes to COLOUR."""
    site = spec.layout.nginx_site
    upstream = shlex.quote(spec.nginx_upstream)
    app = shlex.quote(spec.app_name)
    must(
        remote,
        f"rm -f {upstream}.prev; cp -p {upstream} {upstream}.prev 2>/dev/null; "
        f"if [ -L {site} ]; then had_site=1; else had_site=; fi; "
        f"if printf 'server 127.0.0.1:%s;\\n' {port} > {upstream}.tmp && mv -f {upstream}.tmp "
        f"{upstream} && ln -sfn ../sites-available/{app} {site} && nginx -t -q; then "
        f"rm -f {upstream}.prev; exit 0; fi; "
        f"if [ -e {upstream}.prev ]; then mv -f {upstream}.prev {upstream}; fi; "
        f'[ -n "$had_site" ] || rm -f {site}; exit 1',
        f"pointing nginx at the {colour} colour",
    )


def _route_to(remote: Remote, spec: Spec, colour: str) -> None:
    """nginx (re)loads the staged config: graceful reload, or start when it is not running."""
    must(
        remote,
        "systemctl enable nginx >/dev/null 2>&1 && "
        "if systemctl is-active --quiet nginx; then systemctl reload nginx; "
        "else systemctl start nginx; fi",
        f"pointing nginx at the {colour} colour",
    )
    remote.run(f"printf '%s\\n' {colour} > {spec.layout.colors}/LIVE")


def _stop_live_first(remote: Remote, spec: Spec, live: str, idle: str, before: Links) -> bool:
    """True when the GPU cannot hold LIVE and IDLE at once and gpu_memory_when_short says to
    stop LIVE first; raises DeployFailed (nothing changed) when it says "refuse"."""
    units = {c: spec.layout.colour_unit(c) for c in (live, idle)}
    fit = gpu_memory.check(remote, units, live, idle, spec.gpu_memory_needed_mib)
    if fit.fits is not False:
        if fit.message:
            remote.say(fit.message)
        return False
    if spec.gpu_memory_when_short == "refuse":
        serving = f"{before.current} keeps serving on {live}" if before.current else "unchanged"
        raise DeployFailed(
            "gpu",
            f"{spec.action} of {spec.release_id} refused: {fit.message} and "
            f"gpu_memory_when_short='refuse'; nothing was changed ({serving})",
        )
    remote.warn(
        f"{fit.message}: {live} stops before {idle} starts (gpu_memory_when_short='restart'; "
        f"requests fail until {idle} is healthy)"
    )
    return True


def _live_again(
    remote: Remote, spec: Spec, live: str, before: Links, phase: str, reason: str
) -> NoReturn:
    """LIVE was stopped for a release that then failed in PHASE (REASON): start LIVE again
    behind the health gate, and raise the outcome (switched back, or the switch-back failed)."""
    target, old = spec.release_id, spec.layout.colour_unit(live)
    remote.warn(f"starting {live} ({before.current or 'its release'}) again")
    try:
        if before.current:
            ensure_release_venv(remote, spec, before.current)  # verified, or rebuilt first
        port = spec.colour_ports[COLOURS.index(live)]
        back = wait_healthy(remote, spec, restart_service(remote, old), service=old, port=port)
    except DeployFailed as exc:
        back = Health(False, str(exc))
    if not back.ok:
        raise DeployFailed(
            "rollback",
            f"{spec.action} of {target} failed ({reason}) and {live} "
            f"({before.current or '-'}) did not come back healthy: {back.reason}",
            status=SWITCH_BACK_FAILED,
            journal=f"gpu-memory-short rollback-to={before.current or '-'} also-unhealthy",
        )
    remote.say(f"{live} serves {before.current or 'its release'} again: {back.reason}")
    lbdrain.put_back(remote, spec)
    raise DeployFailed(
        phase,
        f"{spec.action} of {target} failed: {reason}; {live} was stopped for it (GPU memory) "
        f"and serves {before.current or 'its release'} again",
        status=SWITCHED_BACK,
        serving=before.current,
        journal=f"gpu-memory-short rolled-back-to={before.current or '-'} reason={reason!r}",
    )


def go_live(remote: Remote, spec: Spec, before: Links, leave_others: Leave) -> Live:
    target = spec.release_id
    live = live_colour(remote, spec)
    idle = "green" if live == "blue" else "blue"
    port = spec.colour_ports[COLOURS.index(idle)]
    unit = spec.layout.colour_unit(idle)
    stop_first = live is not None and _stop_live_first(remote, spec, live, idle, before)
    _point_colour(remote, spec, idle, target)
    if live is not None and stop_first:
        # One copy at a time: behind a load balancer the host is drained before live stops.
        lbdrain.take_out(remote, spec, spec.colour_ports[COLOURS.index(live)])
        remote.run(f"systemctl stop {shlex.quote(spec.layout.colour_unit(live))}")
    remote.say(f"starting release {target} as {idle} on 127.0.0.1:{port} (live: {live or 'none'})")
    try:
        baseline = restart_service(remote, unit)
    except DeployFailed as exc:
        if live is None or not stop_first:
            raise
        _live_again(remote, spec, live, before, exc.phase, str(exc))
    health = wait_healthy(remote, spec, baseline, service=unit, port=port)
    if not health.ok:
        warn_unhealthy(remote, spec, health, colour=idle)
        remote.run(f"systemctl stop {shlex.quote(unit)}")
        if live is not None and stop_first:
            _live_again(remote, spec, live, before, "health", health.reason)
        if before.current and before.current != target:
            # The live colour keeps running; its venv is checked (rebuilt when damaged) so
            # that its next start does not fail.
            try:
                ensure_release_venv(remote, spec, before.current)
            except DeployFailed as exc:
                remote.warn(f"the venv of {before.current} is damaged and was not rebuilt: {exc}")
        serving = f"{before.current} keeps serving" if before.current else "nothing was serving"
        raise DeployFailed(
            "health",
            f"{spec.action} of {target} failed: {health.reason}; it never received traffic "
            f"and {serving}",
            status=SWITCHED_BACK if before.current and before.current != target else FAILED,
            serving=before.current,
            journal=f"never-in-service colour={idle} reason={health.reason!r}",
        )
    remote.say(health.reason)
    try:
        # Before the in-place units are left: a config nginx refuses must not cost the port.
        _stage_route(remote, spec, idle, port)
    except DeployFailed as exc:
        remote.run(f"systemctl stop {shlex.quote(unit)}")
        if live is not None and stop_first:
            _live_again(remote, spec, live, before, exc.phase, str(exc))
        raise
    if live is None:
        # The public port: from the in-place service or socket (first switch to blue/green).
        leave_others()
    _route_to(remote, spec, idle)
    remote.run(f"systemctl enable {shlex.quote(unit)} 2>/dev/null || true")
    set_links(remote, spec, before.after_switch_to(target))
    remote.say(f"nginx now sends traffic to {idle} ({target})")
    drained = None
    if live is not None:
        old = spec.layout.colour_unit(live)
        if not stop_first:
            drained = _drain(remote, spec, live)
        remote.run(f"systemctl disable --now {shlex.quote(old)} 2>/dev/null || true")
    if stop_first:
        lbdrain.put_back(remote, spec)
    how = f", {live} stopped first: GPU memory" if stop_first else ""
    if drained is not None:
        how += f", {drained.open_at_switch} connection(s) drained in {drained.seconds:.1f} s"
    return Live(
        f"{spec.action} of {target} healthy (blue/green: {idle} live{how})",
        f"previous={before.current or '-'} colour={idle}"
        + (" gpu-memory-short=stopped-first" if stop_first else ""),
    )


def _drain(remote: Remote, spec: Spec, live: str) -> Drained | None:
    """After the switch: LIVE (no longer routed to) keeps serving the connections it has until
    they end, at most drain_timeout_s; what was open and how long it took is reported."""
    remote.say(f"draining {live}: nginx's old workers finish for {spec.drain_s:.0f} s")
    time.sleep(spec.drain_s)
    port = spec.colour_ports[COLOURS.index(live)]
    drained = wait_drained(remote, port, spec.drain_timeout_s)
    if drained is None:
        remote.warn(f"could not count {live}'s open connections (no `ss`): stopping it now")
    else:
        remote.say(drained.message(f"draining {live}"))
    return drained


def leave(remote: Remote, spec: Spec, keep: set[str]) -> bool:
    """Take our site out of nginx (frees the public port) and stop both colours. The in-place
    strategies' lb front is the same site (rendered over ours when the host moves to them with
    lb_drain): it stays, and keeps the port, while the colours stop."""
    layout = spec.layout
    site = shlex.quote(layout.nginx_site)
    if not remote.run(f"test -e {site}").ok:
        return False
    if remote.run(f"grep -qs {shlex.quote('^' + LB_FRONT_MARK)} {site}").ok:
        if not remote.run(f"test -e {layout.colors}/LIVE").ok:
            return False  # no colour was live: nothing of blue/green to leave
        remote.say("leaving blue/green: nginx's lb front keeps the public port")
    else:
        remote.say("leaving blue/green: nginx stops serving the public port")
        # nginx stops too when no other site is left in it (it was there for blue/green).
        remote.run(
            f'rm -f {layout.nginx_site} && if [ -z "$(ls -A /etc/nginx/sites-enabled)" ]; then '
            "systemctl disable --now nginx; else systemctl reload nginx; fi; true"
        )
    for colour in COLOURS:
        unit = shlex.quote(layout.colour_unit(colour))
        remote.run(f"systemctl disable --now {unit} 2>/dev/null || true")
    remote.run(f"rm -f {layout.colors}/LIVE")
    return True
