"""The host's deploy lock: a directory under app_root that appears with its holder inside."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from collections.abc import Callable
from datetime import datetime, timezone

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec

# A lock directory without its info, younger than this, may be a deploy between its two steps.
ANONYMOUS_GRACE_S = 60


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _parse_held(stdout: list[str]) -> tuple[dict[str, object] | None, int]:
    holder: dict[str, object] | None = None
    age = 0
    for line in stdout[1:]:
        if line.startswith("{"):
            try:
                holder = json.loads(line)
            except ValueError:
                holder = None
        elif line.startswith("AGE "):
            age = int(line.split()[1])
    return holder, age


def acquire_lock(
    remote: Remote,
    spec: Spec,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
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
            "started_at": now_iso(),
            "token": token,
        }
    )
    layout = spec.layout
    lock = layout.lock
    # The lock directory appears with its info already inside (made aside, then renamed into
    # place; rename fails on an existing non-empty directory), so a holder is never anonymous.
    staged = f"{lock}.new-{token}"
    take = (
        f"mkdir -p {layout.root} && rm -rf {staged} && mkdir {staged} && "
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
            raise DeployFailed("lock", f"could not take the deploy lock: {tail(result.stderr)}")
        if result.stdout and result.stdout[0] == "ACQUIRED":
            return token
        holder, age = _parse_held(result.stdout)
        stale = lock_is_stale(holder, spec, clock()) if holder or age > ANONYMOUS_GRACE_S else None
        if stale:
            remote.warn(f"taking over a stale deploy lock held by {describe_lock(holder)}: {stale}")
            # Another deploy may move it first: then the next round sees its lock.
            remote.run(f"mv -T {lock} {lock}.stale-{token} && rm -rf {lock}.stale-{token}")
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
        sleep(min(2.0, max(0.1, spec.lock_wait_s - waited)))


def release_lock(remote: Remote, spec: Spec, token: str) -> None:
    """Drop the lock if this deploy still holds it."""
    lock = spec.layout.lock
    remote.run(f"grep -q {shlex.quote(token)} {lock}/info 2>/dev/null && rm -rf {lock} || true")
