"""The guest side of a sandbox host playing a GCE VM: reaching it without SSH (`nsenter` into
its container), whether its sshd answers, and `GuestAgent`, the GCE guest agent: it mirrors an
instance's metadata `ssh-keys` onto the host (creates the user with sudo rights, writes
~USER/.ssh/authorized_keys, removes keys whose entry went away or whose expireOn passed).
Imported through tests/gcp/flowkit.py."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp

SSH_PORT = 22


# --- reaching the guest --------------------------------------------------------------------


def ssh_port_state(address: str, timeout: float = 3.0) -> str:
    """Say "open" when sshd on ADDRESS:22 answers with its banner, "refused" on a reset, else
    "timeout" or the error's name."""
    try:
        with socket.create_connection((address, SSH_PORT), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(64)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    return "open" if banner.startswith(b"SSH-") else f"odd banner {banner!r}"


def container_pid(host: Host) -> int:
    """PID (in this machine's namespace) of the host's container init: the child of its
    systemd-nspawn (whose pid file the supervisor writes) running from the host's tree."""
    pid = int((host.directory / "nspawn.pid").read_text().strip())
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if not args or not args[0].endswith(b"systemd-nspawn") or str(host.merged).encode() not in args:
        raise RuntimeError(f"pid {pid} is not the systemd-nspawn of {host.name}")
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    if len(children) != 1:
        raise RuntimeError(f"systemd-nspawn {pid} of {host.name} has children {children}")
    return children[0]


def in_guest(host: Host, script: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run SCRIPT with sh as root inside the host's namespaces (no SSH involved)."""
    return subprocess.run(
        [
            "nsenter",
            "-t",
            str(container_pid(host)),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def guest_output(host: Host, script: str) -> str:
    proc = in_guest(host, script)
    if proc.returncode != 0:
        raise RuntimeError(f"in {host.name}: {script!r} failed: {proc.stderr.strip()}")
    return proc.stdout


# --- the guest agent -----------------------------------------------------------------------

GOOGLE_USERS = "/var/lib/google/google_users"  # where the real agent lists the users it made
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# Accounts the sandbox itself needs (its own key is in ubuntu's authorized_keys): never touched.
PROTECTED_USERS = frozenset({"root", "ubuntu"})


def _entry_expired(key: str, now: datetime) -> bool:
    """Whether a `TYPE BLOB google-ssh {json}` key has an expireOn in the past."""
    fields = key.split(" ", 3)
    if len(fields) < 4 or fields[2] != "google-ssh":
        return False
    try:
        stamp = json.loads(fields[3])["expireOn"]
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return True  # the agent ignores entries it cannot read
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment <= now


def wanted_keys(ssh_keys: str | None, now: datetime) -> dict[str, tuple[str, ...]]:
    """USER -> keys from an `ssh-keys` metadata value, expired or unreadable lines left out."""
    wanted: dict[str, list[str]] = {}
    for line in (ssh_keys or "").splitlines():
        user, sep, key = line.strip().partition(":")
        key = key.strip()
        if not sep or not _USER_RE.fullmatch(user) or user in PROTECTED_USERS or not key:
            continue
        if _entry_expired(key, now):
            continue
        wanted.setdefault(user, []).append(key)
    return {user: tuple(keys) for user, keys in sorted(wanted.items())}


_AGENT_SETUP = """set -eu
getent group google-sudoers >/dev/null || groupadd google-sudoers
if [ ! -f /etc/sudoers.d/google_sudoers ]; then
  printf '%s\\n' '%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL' > /etc/sudoers.d/google_sudoers
  chmod 0440 /etc/sudoers.d/google_sudoers
fi
mkdir -p /var/lib/google
touch /var/lib/google/google_users
"""


def agent_script(wanted: Mapping[str, tuple[str, ...]]) -> str:
    """The shell script that makes the guest match WANTED (what the guest agent does)."""
    names = " ".join(wanted)
    lines = [_AGENT_SETUP]
    # Users the agent made earlier whose keys are all gone: empty their authorized_keys.
    lines.append(
        "for u in $(cat /var/lib/google/google_users); do\n"
        f'  case " {names} " in *" $u "*) continue ;; esac\n'
        '  h=$(getent passwd "$u" | cut -d: -f6) || continue\n'
        '  k="$h/.ssh/authorized_keys"\n'
        '  if [ -n "$h" ] && [ -f "$k" ]; then : > "$k"; fi\n'
        "done\n"
    )
    for user, keys in wanted.items():
        u = shlex.quote(user)
        body = shlex.quote("".join(k + "\n" for k in keys))
        lines.append(
            f"id -u {u} >/dev/null 2>&1 || useradd -m -s /bin/bash -G google-sudoers {u}\n"
            f"grep -qx {u} {GOOGLE_USERS} || echo {u} >> {GOOGLE_USERS}\n"
            f"h=$(getent passwd {u} | cut -d: -f6); g=$(id -gn {u})\n"
            f'install -d -m 0700 -o {u} -g "$g" "$h/.ssh"\n'
            f'printf %s {body} > "$h/.ssh/authorized_keys.new"\n'
            f'chown {u}:"$g" "$h/.ssh/authorized_keys.new"\n'
            f'chmod 0600 "$h/.ssh/authorized_keys.new"\n'
            f'mv -f "$h/.ssh/authorized_keys.new" "$h/.ssh/authorized_keys"\n'
        )
    return "".join(lines)


class GuestAgent:
    """The GCE guest agent for one sandbox host, driven by the metadata of the fake's instance
    INSTANCE (by name; default the primary one).

    A thread woken by the fake's "metadata" notifications (and every `tick_s` for expiries)
    computes the wanted users and keys and, when they differ from what it last applied, makes
    the guest match through `nsenter`. `applied` records (monotonic time, state) per change.
    """

    def __init__(
        self, fake: FakeGcp, host: Host, tick_s: float = 0.25, instance: str | None = None
    ) -> None:
        self.fake = fake
        self.host = host
        self.tick_s = tick_s
        self.instance = instance
        self.applied: list[tuple[float, dict[str, tuple[str, ...]]]] = []
        self.errors: list[str] = []
        self._current: dict[str, tuple[str, ...]] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._synced = threading.Condition()
        self._generation = 0
        self._thread = threading.Thread(target=self._run, name="guest-agent", daemon=True)

    def _listener(self, what: str) -> None:
        if what == "metadata":
            self._wake.set()

    def start(self) -> GuestAgent:
        self.fake.listeners.append(self._listener)
        self._thread.start()
        self.wait_synced()
        return self

    def stop(self) -> None:
        if self._listener in self.fake.listeners:
            self.fake.listeners.remove(self._listener)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sync_once()
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def _sync_once(self) -> None:
        with self.fake.lock:
            value = self.fake.state.instance_named(self.instance).metadata.get("ssh-keys")
        wanted = wanted_keys(value, datetime.now(timezone.utc))
        if wanted != self._current:
            proc = in_guest(self.host, agent_script(wanted))
            if proc.returncode != 0:
                self.errors.append(proc.stderr.strip() or f"exit {proc.returncode}")
            else:
                self._current = wanted
                self.applied.append((time.monotonic(), wanted))
        with self._synced:
            self._generation += 1
            self._synced.notify_all()

    def wait_synced(self, timeout: float = 15.0) -> None:
        """Until a full pass has run after this call (the guest matches the fake from then)."""
        with self._synced:
            target = self._generation + 2
            self._wake.set()
            if not self._synced.wait_for(lambda: self._generation >= target, timeout):
                raise TimeoutError("the guest agent did not sync")

    def authorized_keys(self, user: str) -> list[str]:
        """USER's authorized_keys on the host, read without SSH ([] when none)."""
        out = guest_output(
            self.host,
            f"h=$(getent passwd {shlex.quote(user)} | cut -d: -f6) || exit 0; "
            'cat "$h/.ssh/authorized_keys" 2>/dev/null || true',
        )
        return [line for line in out.splitlines() if line.strip()]
