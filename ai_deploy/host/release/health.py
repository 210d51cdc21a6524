"""The health gate on the host: restart a unit, then poll it and GET health_path from the host
itself until it is healthy, has failed, or runs out of time."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.release.readiness import (
    LOADING_LINES,
    Deadline,
    parse_loading,
    probe_ready,
    ready_name,
)
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.safetext import safe_line
from ai_deploy.host.settings import Spec


@dataclass(frozen=True)
class Health:
    """OK, and REASON: what the gate saw, never the app's words. The reason reaches the deploy's
    outcome, hence Slack, Discord, the job summary, the error annotation and revisions.log
    ("outcomes only"); what the app answered is said in the CI log alone (see _said_body)."""

    ok: bool
    reason: str


# The HTTP check first, with a short timeout (under socket activation a connection waits in
# the backlog while nothing accepts), then the unit's state as it is after that wait, so a
# process that died meanwhile is seen in the same round.
PROBE = """
python3 - <<'EOF'
import json, re, urllib.request, urllib.error
raw = b""
try:
    with urllib.request.urlopen({url}, timeout=2) as r:
        raw = r.read(65536)
        print("HTTP", r.status, raw[:300].decode(errors="replace").replace("\\n", " "))
except urllib.error.HTTPError as e:
    raw = e.read(65536)
    print("HTTP", e.code, raw[:300].decode(errors="replace").replace("\\n", " "))
except Exception as e:
    print("HTTP 0", type(e).__name__, str(e)[:200])
{loading}
EOF
systemctl show -p ActiveState -p SubState -p NRestarts -p ExecMainStatus -p MainPID {service}
"""


def probe_script(service: str, port: int, path: str) -> str:
    url = json.dumps(f"http://127.0.0.1:{int(port)}{path}")  # a Python literal, never code
    return PROBE.format(service=shlex.quote(service), url=url, loading=LOADING_LINES)


def parse_probe(lines: list[str]) -> tuple[dict[str, str], int, str]:
    """(unit properties, HTTP status or 0, body) from PROBE's output."""
    props: dict[str, str] = {}
    code, body = 0, ""
    for line in lines:
        if line.startswith("HTTP "):
            parts = line.split(" ", 2)
            code = int(parts[1]) if parts[1].isdigit() else 0
            body = parts[2] if len(parts) > 2 else ""
        elif "=" in line:
            key, _, value = line.partition("=")
            props[key] = value
    return props, code, body


def restart_service(remote: Remote, unit: str) -> int:
    """Restart (or start) UNIT; returns its restart counter afterwards."""
    q = shlex.quote(unit)
    result = remote.run(f"systemctl restart {q}")
    if not result.ok:
        raise DeployFailed("restart", f"systemctl restart {unit} failed: {tail(result.stderr)}")
    out = remote.run(f"systemctl show -p NRestarts --value {q}")
    value = out.stdout[0].strip() if out.stdout else "0"
    return int(value) if value.isdigit() else 0


def wait_healthy(
    remote: Remote,
    spec: Spec,
    baseline_restarts: int,
    *,
    service: str | None = None,
    port: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Health:
    """Poll the service and GET health_path on the host until healthy and ready (the ready
    probe, when ready_path is set, answers ready_status), failed or out of time.

    A process that exits, a unit systemd reports failed or restarting, or repeated 5xx answers
    without progress end the wait at once: only a release that is still starting uses the whole
    deadline, which each step of reported progress extends (readiness.Deadline).
    """
    unit, port = service or spec.service, port or spec.port
    probe = probe_script(unit, port, spec.health_path)
    url = f"http://127.0.0.1:{port}{spec.health_path}"
    started = clock()
    deadline = Deadline(started, spec.deadline_s, spec.deadline_max_s)
    next_note = started + 5
    errors, healthy_after, ready_code = 0, None, None
    while True:
        lines = remote.run(probe).stdout
        props, code, body = parse_probe(lines)
        progress = parse_loading(lines)
        deadline.saw(progress, clock())
        state = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"
        restarts = int(props.get("NRestarts", "0") or 0)
        if code == 200:
            if healthy_after is None:
                healthy_after = clock() - started
                _said_body(remote, url, code, body)
            said = f"{url} answered 200 after {healthy_after:.1f} s"
            if spec.ready_path is None:
                return Health(True, said)
            ready_code = probe_ready(remote, spec, port)
            if ready_code == spec.ready_status:
                return Health(
                    True,
                    f"{said}; {ready_name(spec, port)} answered {ready_code} "
                    f"after {clock() - started:.1f} s",
                )
        if (
            props.get("ActiveState") == "failed"
            or restarts > baseline_restarts
            or props.get("SubState") in ("auto-restart", "dead", "exited")
        ):
            status = props.get("ExecMainStatus", "?")
            return Health(
                False, f"the service exited while starting (exit status {status}, {state})"
            )
        if code >= 500 and progress is None:
            errors += 1
            if errors >= spec.fail_after_errors:
                _said_body(remote, url, code, body)
                return Health(False, f"{url} answered {code} {errors} times in a row")
        else:
            errors = 0
        now = clock()
        late = deadline.expired(now)
        if late is not None:
            if code == 200 and ready_code is not None:
                return Health(
                    False,
                    f"{url} answered 200 but {ready_name(spec, port)} did not answer "
                    f"{spec.ready_status} (last answer {ready_code or 'none'}) {late}",
                )
            return Health(False, f"{url} not healthy {late}")
        if now >= next_note:
            ready = f", ready probe {ready_code or 'none'}" if ready_code is not None else ""
            loading = f", {progress.text()}" if progress else ""
            remote.say(
                f"waiting for {url}: {now - started:.0f} s, deadline in "
                f"{deadline.ends - now:.0f} s (service {state}, last answer "
                f"{code or 'none'}{ready}{loading})"
            )
            next_note = now + 5
        sleep(spec.interval_s)


def _said_body(remote: Remote, url: str, code: int, body: str) -> None:
    """The start of what the app answered, in the run's log only (redacted there in CI): it is
    the app's text (a link, a stack trace, a key), so it never goes into a reason."""
    if body.strip():
        say = remote.say if code == 200 else remote.warn
        say(f"{url} answered {code}: {safe_line(body[:120])}")


def error_log_tail(remote: Remote, spec: Spec, n: int = 20, colour: str | None = None) -> list[str]:
    path = spec.layout.error_log(colour)
    return remote.run(f"tail -n {n} {path} 2>/dev/null || true").stdout


def warn_unhealthy(remote: Remote, spec: Spec, health: Health, colour: str | None = None) -> None:
    """Say why the release is not healthy, with the last lines of its error log."""
    lines = error_log_tail(remote, spec, colour=colour)
    remote.warn(f"release {spec.release_id} is not healthy: {health.reason}")
    remote.warn(
        f"last lines of {spec.layout.error_log(colour)}:\n"
        + ("\n".join(f"    {x}" for x in lines) or "    (empty)")
    )
