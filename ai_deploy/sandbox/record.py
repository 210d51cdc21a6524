"""What is recorded about each sandbox host (its meta.json) and how a live one is recognised.

A host is `running` while its supervisor process (ai_deploy.sandbox.supervise) is alive with
the host's name in its arguments; pids alone are not trusted, since they are reused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.sandbox.paths import hosts_dir

SUPERVISOR_MODULE = "ai_deploy.sandbox.supervise"


@dataclass(frozen=True)
class Host:
    """One sandbox host as recorded in its meta.json."""

    name: str
    index: int
    address: str
    supervisor_pid: int
    inventory: str

    @property
    def directory(self) -> Path:
        return hosts_dir() / self.name

    @property
    def merged(self) -> Path:
        return self.directory / "merged"

    @property
    def running(self) -> bool:
        return is_our_supervisor(self.supervisor_pid, self.name)


def cmdline(pid: int) -> list[str]:
    """The arguments of process PID ([] when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_our_supervisor(pid: int, name: str) -> bool:
    args = cmdline(pid)
    return SUPERVISOR_MODULE in args and name in args


def read_meta(path: Path) -> Host | None:
    try:
        data = json.loads(path.read_text())
        return Host(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_meta(host: Host) -> None:
    meta = host.directory / "meta.json"
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps(host.__dict__, indent=2) + "\n")
    os.replace(tmp, meta)


def list_hosts() -> list[Host]:
    """Every host with a state directory, running or not, ordered by index."""
    if not hosts_dir().is_dir():
        return []
    found = []
    for meta in hosts_dir().glob("*/meta.json"):
        host = read_meta(meta)
        if host is not None:
            found.append(host)
    return sorted(found, key=lambda h: h.index)
