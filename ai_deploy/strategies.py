"""How a release goes into service on a host, by deploy strategy, at run time:

- restart: ai-server.service binds the port; a restart refuses connections while it loads.
- socket: ai-server.socket owns the port; ai-server.service is restarted behind it and
  connections wait in the backlog meanwhile (none refused; they wait for the model to load).
- bluegreen: ai-server@blue and ai-server@green on internal ports behind nginx on the public
  port. The idle colour starts the release and must pass the health gate on its own port
  before nginx is pointed at it (graceful reload); the old colour then drains and stops. A
  release that never turns healthy never receives a request.

Moving a host from one strategy to another is part of the next deploy: the units of the old
strategy are stopped, disabled and removed once the new one holds the port. The public port
changes hands in that step, so connections arriving in that instant may be refused.
"""

from __future__ import annotations

import shlex
import time

from ai_deploy.gate import (
    DeployFailed,
    Remote,
    Spec,
    error_log_tail,
    prepare_release,
    prune,
    read_links,
    record,
    restart_service,
    set_links,
    wait_healthy,
)

COLOURS = ("blue", "green")
UNIT_DIR = "/etc/systemd/system"


def _app(spec: Spec) -> str:
    return spec.service.removesuffix(".service")


def socket_unit(spec: Spec) -> str:
    return f"{_app(spec)}.socket"


def colour_unit(spec: Spec, colour: str) -> str:
    return f"{_app(spec)}@{colour}.service"


def _site(spec: Spec) -> str:
    return f"/etc/nginx/sites-enabled/{_app(spec)}"


def _active(remote: Remote, unit: str) -> bool:
    return remote.run(f"systemctl is-active --quiet {shlex.quote(unit)}").ok


def _must(remote: Remote, script: str, what: str) -> None:
    result = remote.run(script)
    if not result.ok:
        detail = " ".join((result.stderr or result.stdout)[-3:])
        raise DeployFailed("switch", f"{what} failed: {detail}")


def _leave_bluegreen(remote: Remote, spec: Spec) -> bool:
    """Take our site out of nginx (frees the public port) and stop both colours."""
    if not remote.run(f"test -e {_site(spec)}").ok:
        return False
    remote.say("leaving blue/green: nginx stops serving the public port")
    # nginx stops too when no other site is left in it (it was there for blue/green).
    remote.run(
        f'rm -f {_site(spec)} && if [ -z "$(ls -A /etc/nginx/sites-enabled)" ]; then '
        "systemctl disable --now nginx; else systemctl reload nginx; fi; true"
    )
    for colour in COLOURS:
        unit = shlex.quote(colour_unit(spec, colour))
        remote.run(f"systemctl disable --now {unit} 2>/dev/null || true")
    remote.run(f"rm -f {spec.root}/colors/LIVE")
    return True


def _remove_unit_file(remote: Remote, unit: str) -> None:
    path = shlex.quote(f"{UNIT_DIR}/{unit}")
    remote.run(f"if [ -e {path} ]; then rm -f {path} && systemctl daemon-reload; fi")


def restart_in_place(remote: Remote, spec: Spec) -> int:
    """restart / socket: bring the host's units to SPEC.strategy and restart the service.

    Returns the service's restart counter after the restart (for the health gate)."""
    service = shlex.quote(spec.service)
    socket = shlex.quote(socket_unit(spec))
    if spec.strategy == "socket":
        if not _active(remote, socket_unit(spec)):
            # The port may be held by the service itself (restart) or by nginx (bluegreen).
            remote.run(f"systemctl stop {service}")
            _leave_bluegreen(remote, spec)
            _must(remote, f"systemctl enable --now {socket}", f"starting {socket_unit(spec)}")
            remote.say(f"{socket_unit(spec)} holds the port now")
        remote.run(f"systemctl disable {service} 2>/dev/null || true")
        return restart_service(remote, spec)
    if _active(remote, socket_unit(spec)) or remote.run(f"test -e {UNIT_DIR}/{socket}").ok:
        remote.run(f"systemctl stop {service}; systemctl disable --now {socket} || true")
        _remove_unit_file(remote, socket_unit(spec))
    _leave_bluegreen(remote, spec)
    remote.run(f"systemctl enable {service} 2>/dev/null || true")
    return restart_service(remote, spec)


def _live_colour(remote: Remote, spec: Spec) -> str | None:
    out = remote.run(f"cat {spec.root}/colors/LIVE 2>/dev/null || true").stdout
    colour = out[0].strip() if out else ""
    return colour if colour in COLOURS else None


def _point_colour(remote: Remote, spec: Spec, colour: str, release: str) -> None:
    colors = f"{spec.root}/colors"
    _must(
        remote,
        f"mkdir -p {colors} && ln -sfn ../releases/{shlex.quote(release)} {colors}/.{colour}.tmp "
        f"&& mv -T {colors}/.{colour}.tmp {colors}/{colour}",
        f"pointing the {colour} colour at {release}",
    )


def _route_to(remote: Remote, spec: Spec, colour: str, port: int) -> None:
    """Point nginx at COLOUR's port: new upstream file, our site enabled, graceful reload."""
    upstream = shlex.quote(spec.nginx_upstream)
    app = shlex.quote(_app(spec))
    _must(
        remote,
        f"printf 'server 127.0.0.1:%s;\\n' {port} > {upstream}.tmp && mv -f {upstream}.tmp "
        f"{upstream} && ln -sfn ../sites-available/{app} {_site(spec)} && nginx -t -q && "
        "systemctl enable nginx >/dev/null 2>&1 && "
        "if systemctl is-active --quiet nginx; then systemctl reload nginx; "
        "else systemctl start nginx; fi",
        f"pointing nginx at the {colour} colour",
    )
    remote.run(f"printf '%s\\n' {colour} > {spec.root}/colors/LIVE")


def change_bluegreen(remote: Remote, spec: Spec, token: str, have_release: bool) -> str:
    """The whole blue/green change (the caller holds the lock)."""
    before_current, before_previous = read_links(remote, spec)
    prepare_release(remote, spec, token, have_release)
    target = spec.release_id
    live = _live_colour(remote, spec)
    idle = "green" if live == "blue" else "blue"
    port = spec.colour_ports[COLOURS.index(idle)]
    unit = colour_unit(spec, idle)
    _point_colour(remote, spec, idle, target)
    remote.say(f"starting release {target} as {idle} on 127.0.0.1:{port} (live: {live or 'none'})")
    baseline = restart_service(remote, spec, service=unit)
    health = wait_healthy(remote, spec, baseline, service=unit, port=port)
    if not health.ok:
        log = error_log_tail(remote, spec, colour=idle)
        remote.run(f"systemctl stop {shlex.quote(unit)}")
        remote.warn(f"release {target} is not healthy as {idle}: {health.reason}")
        remote.warn(
            "last lines of its error log:\n" + ("\n".join(f"    {x}" for x in log) or "    (empty)")
        )
        record(remote, spec, "failed", f"never-in-service colour={idle} reason={health.reason!r}")
        serving = f"{before_current} keeps serving" if before_current else "nothing was serving"
        raise DeployFailed(
            "health",
            f"{spec.action} of {target} failed: {health.reason}; it never received traffic "
            f"and {serving}",
        )
    remote.say(health.reason)
    # The public port: from the in-place service (first switch to blue/green) or nginx.
    socket = shlex.quote(socket_unit(spec))
    service = shlex.quote(spec.service)
    if live is None:
        remote.run(f"systemctl disable --now {socket} {service} 2>/dev/null; true")
        _remove_unit_file(remote, socket_unit(spec))
        _remove_unit_file(remote, spec.service)
    _route_to(remote, spec, idle, port)
    remote.run(f"systemctl enable {shlex.quote(unit)} 2>/dev/null || true")
    new_previous = (
        before_current if before_current and before_current != target else before_previous
    )
    set_links(remote, spec, target, new_previous)
    remote.say(f"nginx now sends traffic to {idle} ({target})")
    if live is not None:
        old = colour_unit(spec, live)
        remote.say(f"draining {live} for {spec.drain_s:.0f} s, then stopping it")
        time.sleep(spec.drain_s)
        remote.run(f"systemctl disable --now {shlex.quote(old)} 2>/dev/null || true")
    record(remote, spec, "ok", f"previous={before_current or '-'} colour={idle}")
    prune(remote, spec)
    return f"{spec.action} of {target} healthy (blue/green: {idle} live)"
