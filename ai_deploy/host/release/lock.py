"""The host's deploy lock, held as a lease: a directory under app_root that appears with its
holder inside (`info`) and a `lease` file whose mtime the holder renews while it works
(ai_deploy.host.release.lease).

A lease not renewed for lock_lease_s may be taken over from any machine; a fresh one only when
its holder (ai_deploy.host.release.identity: machine id, boot id, pid namespace, pid, run) is a
deploy of this very machine that is gone. Every change to the lock happens under `flock` on a
guard file beside it, and a takeover is a compare-and-swap: it moves the lock only while its
info and lease time are still those that were judged stale, so two deploys taking over one
stale lock cannot both win.
Ages are measured with the host's clock alone, so deployers' clocks never matter."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import Layout
from ai_deploy.host.release.identity import Machine
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec

# A lock directory without its info, younger than this, may be a deploy between its two steps
# (only deploys older than the lease keep one like that; ours appears complete).
ANONYMOUS_GRACE_S = 60
LEASE_FILE = "lease"
GUARD_WAIT_S = 20  # the guard is held for milliseconds; longer means a stuck host


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def guard_path(layout: Layout) -> str:
    return f"{layout.lock}.guard"


def guarded(layout: Layout, body: str) -> str:
    """BODY run while holding the lock's guard (flock on app_root/.deploy.lock.guard)."""
    return (
        f"mkdir -p {layout.root} && exec 9>>{guard_path(layout)} || exit 1\n"
        f"if ! flock -w {GUARD_WAIT_S} 9; then echo GUARD-BUSY; exit 0; fi\n{body}"
    )


def _state_functions(lock: str) -> str:
    """Shell functions: `key` (what a compare-and-swap compares: the info's checksum and the
    lease time) and `age` (seconds since the lease was renewed, by the host's clock)."""
    return (
        f"stamp() {{ stat -c %Y {lock}/{LEASE_FILE} 2>/dev/null || stat -c %Y {lock} 2>/dev/null"
        " || date +%s; }\n"
        f'key() {{ printf \'%s %s\' "$(cat {lock}/info 2>/dev/null | cksum)" "$(stamp)"; }}\n'
        "age() { echo $(( $(date +%s) - $(stamp) )); }\n"
    )


@dataclass(frozen=True)
class Held:
    """A lock someone else holds, as read on the host."""

    info: dict[str, object] | None
    lease_age_s: int  # seconds since its lease was last renewed (host clock)
    key: str  # what a takeover must still find to move it


def lock_is_stale(info: dict[str, object] | None, lease_age_s: float, spec: Spec) -> str | None:
    """Why a lock held by INFO, its lease last renewed LEASE_AGE_S ago, may be taken over, or
    None while its holder may be alive."""
    if info is None:
        if lease_age_s > ANONYMOUS_GRACE_S:
            return "its holder never wrote who it is"
        return None
    if lease_age_s > spec.lock_lease_s:
        return (
            f"its lease was not renewed for {lease_age_s:.0f} s "
            f"(lock_lease_s is {spec.lock_lease_s:.0f} s)"
        )
    pid = _pid_of(info)
    if pid is None or not Machine.from_info(info).same_as(spec.machine):
        return None  # a pid of another machine (or boot, or container) says nothing here
    if pid == spec.pid and info.get("run_id") != spec.run_id:
        return f"its deploy (pid {pid} on this machine) is gone: that pid is this deploy's now"
    if not _pid_alive(pid):
        return f"its deploy (pid {pid} on this machine) is no longer running"
    return None


def _pid_of(info: dict[str, object]) -> int | None:
    pid = info.get("pid")
    return pid if type(pid) is int and pid > 0 else None


def holder_fields(pid: int, machine: Machine) -> dict[str, object]:
    """The fields of a lock's info that name its holder's process, in the order acquire_lock
    writes them (holder_needle relies on it)."""
    return {"pid": pid, **machine.as_info()}


def holder_needle(pid: int, machine: Machine) -> str:
    """What a lock's info holds when its holder is exactly the deploy PID on MACHINE: the pid
    is followed by the machine's fields, so pid 424 never matches 4242's lock, nor a lock of
    another machine, boot or pid namespace with that pid."""
    return json.dumps(holder_fields(pid, machine))[1:-1]


def token_needle(token: str) -> str:
    """What a lock's info holds for TOKEN, quotes included, so that only that very token
    matches (`grep -F`), never one it is a prefix of."""
    return json.dumps({"token": token})[1:-1]


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


def _parse_held(stdout: list[str]) -> Held:
    holder: dict[str, object] | None = None
    age, key = 0, ""
    for line in stdout[1:]:
        if line.startswith("{"):
            try:
                holder = json.loads(line)
            except ValueError:
                holder = None
        elif line.startswith("AGE "):
            age = int(line.split()[1])
        elif line.startswith("KEY "):
            key = line[4:]
    return Held(holder, age, key)


def take_script(layout: Layout, token: str, info: str, judged: str | None) -> str:
    """Under the guard: move the lock aside if it is still the one judged stale (its key is
    JUDGED), then take it if it is free (ACQUIRED); else say who holds it (HELD, KEY, AGE, info).
    The lock directory appears with its info and lease already inside (made aside, then renamed
    into place), so a holder is never anonymous."""
    lock = layout.lock
    staged = f"{lock}.new-{token}"
    aside = f"{lock}.stale-{token}"
    takeover = ""
    if judged is not None:
        takeover = (
            f'if [ "$(key)" = {shlex.quote(judged)} ]; then\n'
            f"  mv -T {lock} {aside} && rm -rf {aside}\n"
            "fi\n"
        )
    return guarded(
        layout,
        _state_functions(lock) + takeover + f"if [ ! -e {lock} ] && [ ! -L {lock} ]; then\n"
        f"  rm -rf {staged} && mkdir {staged} && "
        f"printf '%s\\n' {shlex.quote(info)} > {staged}/info && touch {staged}/{LEASE_FILE} && "
        f"mv -T {staged} {lock} && echo ACQUIRED && exit 0\n"
        f"  rm -rf {staged}\n"
        "fi\n"
        f'echo HELD; echo "KEY $(key)"; echo "AGE $(age)"; cat {lock}/info 2>/dev/null; echo\n',
    )


def acquire_lock(
    remote: Remote,
    spec: Spec,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    token: str | None = None,
) -> str:
    """Take the host's deploy lock (with TOKEN in its info when given); returns the token that
    renews and releases it. Under a rollout (SPEC.lock_token) the lock is already held by it:
    joined, or DeployFailed when it is not the rollout's any more."""
    if spec.lock_token:
        return join_lock(remote, spec, spec.lock_token)
    token = token or secrets.token_hex(8)
    info = json.dumps(
        {
            "who": spec.who,
            "deployer": spec.deployer,
            **holder_fields(spec.pid, spec.machine),
            "run_id": spec.run_id,
            "action": spec.action,
            "release": spec.release_id,
            "started": int(clock()),
            "started_at": now_iso(),
            "token": token,
        }
    )
    waited_from = clock()
    announced = False
    judged: str | None = None
    while True:
        result = remote.run(take_script(spec.layout, token, info, judged))
        if not result.ok:
            raise DeployFailed("lock", f"could not take the deploy lock: {tail(result.stderr)}")
        first = result.stdout[0] if result.stdout else ""
        if first == "ACQUIRED":
            return token
        if first == "GUARD-BUSY":
            raise DeployFailed(
                "lock", f"the guard of {spec.layout.lock} stayed taken for {GUARD_WAIT_S} s"
            )
        held = _parse_held(result.stdout)
        stale = lock_is_stale(held.info, held.lease_age_s, spec)
        if stale and held.key != judged:
            remote.warn(
                f"taking over a stale deploy lock held by {describe_lock(held.info)}: {stale}"
            )
            # Moved only if it is still this very lock: another deploy may take it first, and
            # then the next round sees that one's fresh lease.
            judged = held.key
            continue
        judged = None
        waited = clock() - waited_from
        if waited >= spec.lock_wait_s:
            raise DeployFailed(
                "lock",
                f"{spec.app_root} is locked by {describe_lock(held.info)}; wait for it to finish "
                "(or pass --data lock_wait_s=SECONDS); a lease not renewed for "
                f"lock_lease_s ({spec.lock_lease_s:.0f} s) is taken over, "
                "and if it died: ai-deploy lock release",
            )
        if not announced:
            remote.say(f"waiting up to {spec.lock_wait_s:.0f} s for {describe_lock(held.info)}")
            announced = True
        sleep(min(2.0, max(0.1, spec.lock_wait_s - waited)))


def join_script(layout: Layout, token: str) -> str:
    """Under the guard: renew the lease of the lock if its info holds TOKEN (JOINED), else say
    who holds it (HELD, KEY, AGE, info)."""
    lock = layout.lock
    return guarded(
        layout,
        _state_functions(lock)
        + f"if grep -qF -- {shlex.quote(token_needle(token))} {lock}/info 2>/dev/null; then\n"
        f"  touch {lock}/{LEASE_FILE} && echo JOINED && exit 0\nfi\n"
        f'echo HELD; echo "KEY $(key)"; echo "AGE $(age)"; cat {lock}/info 2>/dev/null; echo\n',
    )


def join_lock(remote: Remote, spec: Spec, token: str) -> str:
    """Work under the lock a rollout took on this host (its info holds TOKEN)."""
    result = remote.run(join_script(spec.layout, token))
    first = result.stdout[0] if result.ok and result.stdout else ""
    if first == "JOINED":
        return token
    if first == "GUARD-BUSY":
        raise DeployFailed(
            "lock", f"the guard of {spec.layout.lock} stayed taken for {GUARD_WAIT_S} s"
        )
    if not result.ok:
        raise DeployFailed("lock", f"could not read the deploy lock: {tail(result.stderr)}")
    held = _parse_held(result.stdout) if first == "HELD" else None
    holder = describe_lock(held.info) if held and held.info else "nobody"
    raise DeployFailed(
        "lock",
        f"the rollout's lock on {spec.app_root} is not held any more (now: {holder}); "
        "the rollout stops here",
    )


def read_held(remote: Remote, layout: Layout) -> Held | None:
    """The lock as it is now (None when there is none)."""
    lock = layout.lock
    out = remote.run(
        _state_functions(lock) + f"if [ -e {lock} ] || [ -L {lock} ]; then\n"
        f'echo HELD; echo "KEY $(key)"; echo "AGE $(age)"; cat {lock}/info 2>/dev/null; '
        "echo\nfi\n"
    )
    if not out.stdout or out.stdout[0] != "HELD":
        return None
    return _parse_held(out.stdout)


def remove_if_key(remote: Remote, layout: Layout, key: str) -> bool:
    """Remove the lock, under the guard, only if it is still the one whose key is KEY."""
    lock = layout.lock
    aside = f"{lock}.stale-{secrets.token_hex(8)}"
    out = remote.run(
        guarded(
            layout,
            _state_functions(lock) + f'if [ "$(key)" = {shlex.quote(key)} ]; then\n'
            f"  mv -T {lock} {aside} && rm -rf {aside} && echo REMOVED\nfi\n",
        )
    )
    return bool(out.stdout) and out.stdout[0] == "REMOVED"


def release_script(layout: Layout, *, token: str | None = None, needle: str | None = None) -> str:
    """Under the guard, remove the lock if its info holds TOKEN (or NEEDLE, a holder_needle);
    prints RELEASED when it did."""
    lock = layout.lock
    text = token_needle(token) if token is not None else str(needle)
    return guarded(
        layout,
        f"if grep -qF -- {shlex.quote(text)} {lock}/info 2>/dev/null; then\n"
        f"  rm -rf {lock} && echo RELEASED\nfi\ntrue\n",
    )


def release_if_held_by(remote: Remote, layout: Layout, pid: int, machine: Machine) -> bool:
    """Remove the lock (one round trip) if its holder is exactly the deploy PID on MACHINE,
    a machine that could name itself; True when it did."""
    if not machine.known:
        return False
    out = remote.run(release_script(layout, needle=holder_needle(pid, machine)))
    return out.stdout[:1] == ["RELEASED"]


def release_lock(remote: Remote, spec: Spec, token: str) -> None:
    """Drop the lock if this deploy still holds it (a rollout's lock stays: it drops it)."""
    if spec.lock_token and token == spec.lock_token:
        return
    remote.run(release_script(spec.layout, token=token))
