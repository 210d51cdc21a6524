"""The rollout's side of ai_deploy.rollout.holder: start it, read each host's state and whether
every lock was taken, keep it running for the rollout (reading, as they come, the hosts whose
lease it lost: `Fleet.lost`), and close it on every way out (its stdin closes: it drops the
locks, also when this process is killed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ai_deploy.project import project_dir
from ai_deploy.rollout.plan import HostFacts

CLOSE_WAIT_S = 30.0
HOLDER = [sys.executable, "-m", "ai_deploy.rollout.holder"]  # its arguments follow


class FleetLockError(Exception):
    """The rollout could not start: KIND is "refused" (a host is locked: HOST names it),
    "unreachable", "unknown" (not a host of the inventory) or "error"."""

    def __init__(self, kind: str, host: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.host = kind, host


@dataclass
class Fleet:
    """What the holder read: each host's state by name (in lock order) and the rollout settings
    of group_data (from the first host); then, while the rollout runs, each host whose lease
    the holder lost, with why (filled in from the holder's output as soon as it says so)."""

    facts: dict[str, HostFacts] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)

    def lost_lock(self) -> str | None:
        """Why the rollout must change no host any more (a lost lease, naming its host)."""
        for host, why in list(self.lost.items()):
            return f"the rollout's lock on {host} was lost: {why}"
        return None


@contextmanager
def holding(
    inventory: str,
    token: str,
    release: str,
    chosen: Sequence[str],
    data: Sequence[str],
    env: Mapping[str, str],
    *,
    take_locks: bool = True,
) -> Iterator[Fleet]:
    """Every chosen host's lock held (TAKE_LOCKS) while the block runs; yields each host's
    state, by name, in lock order, and fills in `Fleet.lost` while the block runs."""
    proc = subprocess.Popen(
        [
            *HOLDER,
            inventory,
            "hold" if take_locks else "facts",
            token,
            release,
            ",".join(chosen),
            *data,
        ],
        cwd=project_dir(),
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # stopped by us, never by the terminal's Ctrl-C
    )
    reader: threading.Thread | None = None
    try:
        fleet = _read_until_held(proc)
        reader = threading.Thread(target=_read_lost, args=(proc, fleet), daemon=True)
        reader.start()
        yield fleet
    finally:
        _close(proc, reader)


def _read_until_held(proc: subprocess.Popen[str]) -> Fleet:
    assert proc.stdout is not None
    fleet = Fleet()
    facts = fleet.facts
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        word, _, rest = line.partition(" ")
        if word == "FACTS":
            f = HostFacts.from_json(rest)
            facts[f.host] = f
        elif word == "SETTINGS":
            fleet.settings = json.loads(rest)
        elif word == "LOST":
            _note_lost(fleet, rest)
        elif word in ("HELD", "DONE"):
            return fleet
        elif word in ("REFUSED", "UNREACHABLE", "UNKNOWN"):
            host, _, why = rest.partition("\t")
            raise FleetLockError(word.lower(), host, why if host == "-" else f"{host}: {why}")
        elif word == "ERROR":
            raise FleetLockError("error", "", json.loads(rest))
    rc = proc.wait()
    raise FleetLockError("error", "", f"reading the hosts stopped (exit {rc}) before they answered")


def _read_lost(proc: subprocess.Popen[str], fleet: Fleet) -> None:
    """The holder's lines after HELD, until it ends: each LOST into FLEET.lost."""
    assert proc.stdout is not None
    with contextlib.suppress(OSError, ValueError):  # its pipe closed by _close
        for raw in proc.stdout:
            word, _, rest = raw.rstrip("\n").partition(" ")
            if word == "LOST":
                _note_lost(fleet, rest)


def _note_lost(fleet: Fleet, rest: str) -> None:
    host, _, why = rest.partition("\t")
    fleet.lost.setdefault(host, why)


def _close(proc: subprocess.Popen[str], reader: threading.Thread | None) -> None:
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=CLOSE_WAIT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(
            "ai-deploy: releasing the rollout's locks took too long; stopped (a lock left "
            "behind is taken over once its lease runs out)",
            file=sys.stderr,
            flush=True,
        )
    if reader is not None:
        reader.join(timeout=5.0)  # the holder has ended: its output ends too
    if proc.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdout.close()
