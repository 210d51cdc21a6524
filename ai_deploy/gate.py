"""Putting a release in service on one host: the part of the deploy that must decide at run
time. It holds the host's deploy lock for the whole change, extracts the release into a fresh
directory, builds the venv named by the lock hash when missing, switches `current` atomically,
restarts the service and waits for it to be healthy; a release that does not turn healthy is
switched back to the previous one, which must be healthy again, and the deploy fails.

Every step runs through a `Remote` (one shell command at a time, as root), so the same code
serves pyinfra (see ai_deploy.ops) and any other runner.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from ai_deploy.facts import VENV_COMPLETE

LOCK_DIR = ".deploy.lock"


@dataclass(frozen=True)
class Result:
    ok: bool
    stdout: list[str]
    stderr: list[str]


class Remote(Protocol):
    """Runs shell on the host as root and reports to the person running the deploy."""

    def run(self, script: str, *, timeout: float | None = None) -> Result: ...

    def say(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...


class DeployFailed(Exception):
    """The deploy stopped; `phase` says where (lock, release, venv, health, rollback)."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


@dataclass(frozen=True)
class Spec:
    """Everything the gate needs, decided on the deployer before the run."""

    app_root: str
    service: str
    action: str  # deploy | rollback | restart
    release_id: str
    port: int
    health_path: str = "/health"
    deadline_s: float = 300.0
    interval_s: float = 1.0
    fail_after_errors: int = 3
    keep: int = 5
    lock_wait_s: float = 0.0
    lock_stale_s: float = 7200.0
    who: str = "unknown"
    deployer: str = "unknown"
    pid: int = 0
    artifact_remote: str | None = None
    artifact_sha256: str | None = None
    lock_hash: str | None = None
    code_owner: str = "root"
    uv_path: str = "/usr/local/bin/uv"
    uv_python: str = "python3"
    uv_python_downloads: str = "never"
    uv_env: dict[str, str] = field(default_factory=dict)
    log_dir: str = "/var/log/dojangkok"
    app_name: str = "ai-server"
    strategy: str = "restart"  # restart | socket | bluegreen (see ai_deploy.strategies)
    colour_ports: tuple[int, int] = (8001, 8002)  # bluegreen: blue, green
    drain_s: float = 5.0  # bluegreen: how long the old colour finishes its requests
    nginx_upstream: str = "/etc/nginx/ai-server-upstream.conf"

    @property
    def root(self) -> str:
        return shlex.quote(self.app_root)

    @property
    def lock_path(self) -> str:
        return f"{self.root}/{LOCK_DIR}"


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tail(lines: list[str], n: int = 15) -> str:
    return "\n".join(f"    {line}" for line in lines[-n:])


# --- the lock -----------------------------------------------------------------------------


def lock_is_stale(info: dict[str, object] | None, spec: Spec, now: float) -> str | None:
    """Why a lock held by INFO may be taken over, or None while its holder may be alive."""
    if info is None:
        return "its holder never wrote who it is"
    started = float(info.get("started", 0) or 0)  # type: ignore[arg-type]
    if now - started > spec.lock_stale_s:
        return f"it is older than lock_stale_s ({spec.lock_stale_s:.0f} s)"
    pid = int(info.get("pid", 0) or 0)  # type: ignore[arg-type]
    if info.get("deployer") == spec.deployer and pid > 0 and not _pid_alive(pid):
        return f"its deploy (pid {pid} on this machine) is no longer running"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_lock(info: dict[str, object] | None) -> str:
    if not info:
        return "an unknown deploy"
    return (
        f"{info.get('who')} ({info.get('action')} of {info.get('release')}, "
        f"from {info.get('deployer')} pid {info.get('pid')}, since {info.get('started_at')})"
    )


def acquire_lock(remote: Remote, spec: Spec, *, clock: Callable[[], float] = time.time) -> str:
    """Take the host's deploy lock; returns the token that releases it."""
    token = secrets.token_hex(8)
    info = json.dumps(
        {
            "who": spec.who,
            "deployer": spec.deployer,
            "pid": spec.pid,
            "action": spec.action,
            "release": spec.release_id,
            "started": int(clock()),
            "started_at": _now_iso(),
            "token": token,
        }
    )
    lock = spec.lock_path
    # The lock directory appears with its info already inside (made aside, then renamed into
    # place; rename fails on an existing non-empty directory), so a holder is never anonymous.
    staged = f"{lock}.new-{token}"
    take = (
        f"mkdir -p {spec.root} && rm -rf {staged} && mkdir {staged} && "
        f"printf '%s\\n' {shlex.quote(info)} > {staged}/info && "
        f"if mv -T {staged} {lock} 2>/dev/null && grep -q {token} {lock}/info; then "
        f"echo ACQUIRED; else rm -rf {staged}; echo HELD; cat {lock}/info 2>/dev/null; "
        f"echo; echo AGE $(( $(date +%s) - $(stat -c %Y {lock} 2>/dev/null || date +%s) )); fi"
    )
    waited_from = clock()
    announced = False
    while True:
        result = remote.run(take)
        if not result.ok:
            raise DeployFailed("lock", f"could not take the deploy lock: {_tail(result.stderr)}")
        if result.stdout and result.stdout[0] == "ACQUIRED":
            return token
        holder: dict[str, object] | None = None
        age = 0
        for line in result.stdout[1:]:
            if line.startswith("{"):
                try:
                    holder = json.loads(line)
                except ValueError:
                    holder = None
            elif line.startswith("AGE "):
                age = int(line.split()[1])
        # A lock dir without info younger than a minute may be a deploy between its two steps.
        stale = lock_is_stale(holder, spec, clock()) if holder or age > 60 else None
        if stale:
            remote.warn(f"taking over a stale deploy lock held by {describe_lock(holder)}: {stale}")
            moved = remote.run(f"mv -T {lock} {lock}.stale-{token} && rm -rf {lock}.stale-{token}")
            if not moved.ok:
                continue  # another deploy moved it first; try again
            continue
        waited = clock() - waited_from
        if waited >= spec.lock_wait_s:
            raise DeployFailed(
                "lock",
                f"{spec.app_root} is locked by {describe_lock(holder)}; wait for it to finish "
                "(or pass --data lock_wait_s=SECONDS), and if it died: ai-deploy lock release",
            )
        if not announced:
            remote.say(f"waiting up to {spec.lock_wait_s:.0f} s for {describe_lock(holder)}")
            announced = True
        time.sleep(min(2.0, max(0.1, spec.lock_wait_s - waited)))


def release_lock(remote: Remote, spec: Spec, token: str) -> None:
    """Drop the lock if this deploy still holds it."""
    lock = spec.lock_path
    remote.run(f"grep -q {shlex.quote(token)} {lock}/info 2>/dev/null && rm -rf {lock} || true")


# --- the release and its venv -------------------------------------------------------------


def _uv_env(spec: Spec) -> str:
    pairs = {"UV_PYTHON_DOWNLOADS": spec.uv_python_downloads, **spec.uv_env}
    return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in pairs.items())


def prepare_release(remote: Remote, spec: Spec, token: str, have_release: bool) -> None:
    """Make releases/<id> (fresh directory, renamed into place) with its venv ready."""
    root, rid = spec.root, shlex.quote(spec.release_id)
    release = f"{root}/releases/{rid}"
    tmp = f"{root}/releases/.tmp-{spec.release_id}-{token}"
    if not have_release:
        assert spec.artifact_remote and spec.artifact_sha256
        art = shlex.quote(spec.artifact_remote)
        check = remote.run(f"echo {spec.artifact_sha256}' '{art} | sha256sum -c --status")
        if not check.ok:
            raise DeployFailed(
                "release",
                f"the uploaded artifact {spec.artifact_remote} does not match sha256 "
                f"{spec.artifact_sha256}; run the deploy again",
            )
        extract = remote.run(
            f"set -e; rm -rf {tmp}; mkdir -p {tmp}; "
            f"tar -xzf {art} -C {tmp} --no-same-owner; "
            f"printf '%s\\n' {rid} > {tmp}/REVISION; "
            f"chown -R {shlex.quote(spec.code_owner)}: {tmp}; chmod 0755 {tmp}"
        )
        if not extract.ok:
            remote.run(f"rm -rf {tmp}")
            raise DeployFailed(
                "release", f"extracting the artifact failed:\n{_tail(extract.stderr)}"
            )
    workdir = tmp if not have_release else release
    if spec.lock_hash is None:
        found = remote.run(f"sha256sum {workdir}/uv.lock")
        if not found.ok or not found.stdout:
            raise DeployFailed("venv", f"release {spec.release_id} has no uv.lock")
        lock_hash = found.stdout[0].split()[0]
    else:
        lock_hash = spec.lock_hash
    ensure_venv(remote, spec, lock_hash, workdir, tmp if not have_release else None)
    link = f"ln -sfn ../../venvs/{lock_hash} {workdir}/.venv"
    if have_release:
        remote.run(link)
        return
    done = remote.run(
        f"set -e; {link}; mv -T {tmp} {release}; rm -f {shlex.quote(spec.artifact_remote or '')}"
    )
    if not done.ok:
        remote.run(f"rm -rf {tmp}")
        raise DeployFailed(
            "release", f"could not move the release into place:\n{_tail(done.stderr)}"
        )


def ensure_venv(
    remote: Remote, spec: Spec, lock_hash: str, workdir: str, cleanup: str | None
) -> None:
    """venvs/<lock_hash> complete, built with `uv sync --frozen` only when missing."""
    venv = f"{spec.root}/venvs/{lock_hash}"
    if remote.run(f"test -e {venv}/{VENV_COMPLETE}").ok:
        remote.say(f"venv {lock_hash[:12]} is ready (uv.lock unchanged): no sync")
        return
    remote.say(f"building venv {lock_hash[:12]} with uv sync --frozen (the service keeps serving)")
    started = time.monotonic()
    sync = remote.run(
        f"rm -rf {venv} && cd {workdir} && env UV_PROJECT_ENVIRONMENT={venv} {_uv_env(spec)} "
        f"{shlex.quote(spec.uv_path)} sync --frozen --no-install-project --no-dev "
        f"--compile-bytecode --python {shlex.quote(spec.uv_python)} 2>&1 && "
        # uv leaves its own .lock world-writable: the service must not be able to write here.
        f"chmod -R go-w {venv} && touch {venv}/{VENV_COMPLETE}",
        timeout=3600,
    )
    if not sync.ok:
        remote.run(f"rm -rf {venv}" + (f" {cleanup}" if cleanup else ""))
        raise DeployFailed(
            "venv",
            "uv sync --frozen failed; the running release is untouched. Last lines:\n"
            + _tail(sync.stdout + sync.stderr),
        )
    remote.say(f"venv {lock_hash[:12]} built in {time.monotonic() - started:.1f} s")


# --- switch, restart, health --------------------------------------------------------------


def read_links(remote: Remote, spec: Spec) -> tuple[str | None, str | None]:
    out = remote.run(
        f"echo C $(readlink {spec.root}/current 2>/dev/null); "
        f"echo P $(readlink {spec.root}/previous 2>/dev/null)"
    )
    cur = prev = None
    for line in out.stdout:
        tag, _, value = line.partition(" ")
        value = value.strip()
        name = value.rsplit("/", 1)[-1] if value else None
        if tag == "C":
            cur = name
        elif tag == "P":
            prev = name
    return cur, prev


def set_links(remote: Remote, spec: Spec, current: str | None, previous: str | None) -> None:
    """Point `current` and `previous` atomically (temporary link renamed over the old one)."""
    parts = []
    for name, target in (("current", current), ("previous", previous)):
        path = f"{spec.root}/{name}"
        if target is None:
            parts.append(f"rm -f {path}")
        else:
            tmp = f"{spec.root}/.{name}.tmp"
            parts.append(f"ln -sfn releases/{shlex.quote(target)} {tmp} && mv -T {tmp} {path}")
    result = remote.run(" && ".join(parts))
    if not result.ok:
        raise DeployFailed(
            "switch", f"could not switch {spec.app_root}/current: {_tail(result.stderr)}"
        )


@dataclass
class Health:
    ok: bool
    reason: str


# The HTTP check first, with a short timeout (under socket activation a connection waits in
# the backlog while nothing accepts), then the unit's state as it is after that wait, so a
# process that died meanwhile is seen in the same round.
PROBE = """
python3 - <<'EOF'
import urllib.request, urllib.error
try:
    with urllib.request.urlopen("http://127.0.0.1:{port}{path}", timeout=2) as r:
        print("HTTP", r.status, r.read(300).decode(errors="replace").replace("\\n", " "))
except urllib.error.HTTPError as e:
    print("HTTP", e.code, e.read(300).decode(errors="replace").replace("\\n", " "))
except Exception as e:
    print("HTTP 0", type(e).__name__, str(e)[:200])
EOF
systemctl show -p ActiveState -p SubState -p NRestarts -p ExecMainStatus -p MainPID {service}
"""


def parse_probe(lines: list[str]) -> tuple[dict[str, str], int, str]:
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


def restart_service(remote: Remote, spec: Spec, service: str | None = None) -> int:
    """Restart (or start) the service; returns its restart counter afterwards."""
    unit = shlex.quote(service or spec.service)
    result = remote.run(f"systemctl restart {unit}")
    if not result.ok:
        raise DeployFailed("restart", f"systemctl restart failed: {_tail(result.stderr)}")
    out = remote.run(f"systemctl show -p NRestarts --value {unit}")
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
) -> Health:
    """Poll the service and GET health_path on the host until healthy, failed or out of time.

    A process that exits, a unit systemd reports failed or restarting, or repeated 5xx answers
    end the wait at once: only a release that is still starting uses the whole deadline.
    """
    unit, port = service or spec.service, port or spec.port
    probe = PROBE.format(service=shlex.quote(unit), port=port, path=spec.health_path)
    url = f"http://127.0.0.1:{port}{spec.health_path}"
    started = clock()
    next_note = started + 5
    errors = 0
    while True:
        props, code, body = parse_probe(remote.run(probe).stdout)
        state = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"
        restarts = int(props.get("NRestarts", "0") or 0)
        if code == 200:
            return Health(True, f"{url} answered 200 after {clock() - started:.1f} s: {body[:120]}")
        if (
            props.get("ActiveState") == "failed"
            or restarts > baseline_restarts
            or props.get("SubState") in ("auto-restart", "dead", "exited")
        ):
            status = props.get("ExecMainStatus", "?")
            return Health(
                False, f"the service exited while starting (exit status {status}, {state})"
            )
        if code >= 500:
            errors += 1
            if errors >= spec.fail_after_errors:
                return Health(False, f"{url} answered {code} {errors} times in a row: {body[:120]}")
        else:
            errors = 0
        now = clock()
        if now - started >= spec.deadline_s:
            return Health(
                False, f"{url} not healthy within health_deadline_s={spec.deadline_s:.0f} s"
            )
        if now >= next_note:
            remote.say(
                f"waiting for {url}: {now - started:.0f} s of {spec.deadline_s:.0f} s "
                f"(service {state}, last answer {code or 'none'})"
            )
            next_note = now + 5
        time.sleep(spec.interval_s)


def error_log_tail(remote: Remote, spec: Spec, n: int = 20, colour: str | None = None) -> list[str]:
    name = f"{spec.app_name}-{colour}" if colour else spec.app_name
    path = shlex.quote(f"{spec.log_dir}/{name}-error.log")
    return remote.run(f"tail -n {n} {path} 2>/dev/null || true").stdout


def record(remote: Remote, spec: Spec, outcome: str, detail: str = "") -> None:
    line = f"{_now_iso()} {spec.action} {spec.release_id} {outcome} by={spec.who}"
    if detail:
        line += f" {detail}"
    line = re.sub(r"[\r\n]+", " ", line)
    remote.run(f"printf '%s\\n' {shlex.quote(line)} >> {spec.root}/revisions.log")


def prune(remote: Remote, spec: Spec) -> None:
    """Keep the newest `keep` releases (never current or previous), and venvs still in use."""
    root = spec.root
    script = f"""
cd {root}/releases || exit 0
cur=$(readlink ../current); cur=${{cur##*/}}; prev=$(readlink ../previous); prev=${{prev##*/}}
rm -rf ./.tmp-*
n=0
for id in $(ls -1t); do
  n=$((n+1))
  if [ "$n" -gt {int(spec.keep)} ] && [ "$id" != "$cur" ] && [ "$id" != "$prev" ]; then
    rm -rf -- "$id" && echo "removed release $id"
  fi
done
used=$(for id in $(ls -1); do v=$(readlink "$id/.venv"); echo "${{v##*/}}"; done)
for v in $(ls -1 ../venvs 2>/dev/null); do
  echo "$used" | grep -qx "$v" || {{ rm -rf -- "../venvs/$v" && echo "removed venv $v"; }}
done
"""
    for line in remote.run(script).stdout:
        remote.say(line)


# --- the whole change ---------------------------------------------------------------------


def put_in_service(remote: Remote, spec: Spec, *, have_release: bool) -> str:
    """Run the whole change under the lock; returns a one-line outcome or raises DeployFailed."""
    from ai_deploy import strategies

    token = acquire_lock(remote, spec)
    try:
        if spec.strategy == "bluegreen":
            return strategies.change_bluegreen(remote, spec, token, have_release)
        return _change(remote, spec, token, have_release)
    finally:
        release_lock(remote, spec, token)


def _change(remote: Remote, spec: Spec, token: str, have_release: bool) -> str:
    """restart and socket: one service, restarted in place behind the health gate."""
    from ai_deploy import strategies

    before_current, before_previous = read_links(remote, spec)
    prepare_release(remote, spec, token, have_release)
    target = spec.release_id
    new_previous = (
        before_current if before_current and before_current != target else before_previous
    )
    set_links(remote, spec, target, new_previous)
    remote.say(f"current -> releases/{target}; restarting {spec.service} ({spec.strategy})")
    baseline = strategies.restart_in_place(remote, spec)
    health = wait_healthy(remote, spec, baseline)
    if health.ok:
        remote.say(health.reason)
        record(remote, spec, "ok", f"previous={before_current or '-'}")
        prune(remote, spec)
        return f"{spec.action} of {target} healthy"
    errors = error_log_tail(remote, spec)
    log = "\n".join(f"    {line}" for line in errors) or "    (empty)"
    remote.warn(f"release {target} is not healthy: {health.reason}")
    remote.warn(f"last lines of {spec.log_dir}/{spec.app_name}-error.log:\n{log}")
    if not before_current:
        # A first deploy: no healthy release to go back to, so none is left in service.
        socket = shlex.quote(strategies.socket_unit(spec))
        remote.run(f"systemctl stop {shlex.quote(spec.service)} {socket} 2>/dev/null; true")
        set_links(remote, spec, None, before_previous)
        record(remote, spec, "failed", f"no-previous-release reason={health.reason!r}")
        raise DeployFailed(
            "health",
            f"{spec.action} of {target} failed: {health.reason}; there is no previous release "
            "to go back to, so the service is stopped",
        )
    if before_current == target:
        record(remote, spec, "failed", f"reason={health.reason!r}")
        raise DeployFailed(
            "health",
            f"{spec.action} of {target} failed after the restart: {health.reason}; the release "
            "did not change, so there is nothing to switch back to (check the unit and .env)",
        )
    remote.warn(f"switching back to release {before_current}")
    set_links(remote, spec, before_current, before_previous)
    baseline = strategies.restart_in_place(remote, spec)
    back = wait_healthy(remote, spec, baseline)
    if not back.ok:
        record(remote, spec, "failed", f"rollback-to={before_current} also-unhealthy")
        raise DeployFailed(
            "rollback",
            f"{spec.action} of {target} failed ({health.reason}) and the previous release "
            f"{before_current} is not healthy either: {back.reason}",
        )
    remote.say(f"release {before_current} serves again: {back.reason}")
    record(remote, spec, "failed", f"rolled-back-to={before_current} reason={health.reason!r}")
    raise DeployFailed(
        "health",
        f"{spec.action} of {target} failed: {health.reason}; rolled back to {before_current}, "
        "which is healthy",
    )
