"""Who holds a deploy lock (ai_deploy.host.release.lock), named so that no other machine or run
can pass for it: the machine (its /etc/machine-id, the kernel's boot id and the pid namespace
the deploy runs in), the deploy's pid there, and a random id drawn once per process (the run).

A host name says nothing of the kind: containers on the host's network share it, and laptops
keep their default names. A pid means something only on the machine, boot and pid namespace
that gave it, so a lock's pid is checked only when all three are this process's own."""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
PID_NS_LINK = "/proc/self/ns/pid"

RUN_ID = secrets.token_hex(8)  # this process's run: a pid reused later is another run


@dataclass(frozen=True)
class Machine:
    """What tells a running process's machine apart: all three are needed, and an empty one
    (a container without /etc/machine-id, no /proc) makes the machine unknown."""

    machine_id: str
    boot_id: str
    pid_ns: str

    @property
    def known(self) -> bool:
        return bool(self.machine_id and self.boot_id and self.pid_ns)

    def same_as(self, other: Machine) -> bool:
        """True only when both are known and every part is equal: a pid on OTHER is a pid
        here."""
        return self.known and self == other

    def as_info(self) -> dict[str, str]:
        """The fields a lock's info holds."""
        return {"machine_id": self.machine_id, "boot_id": self.boot_id, "pid_ns": self.pid_ns}

    @classmethod
    def from_info(cls, info: Mapping[str, object]) -> Machine:
        """The machine a lock's INFO names (unknown for a lock written without it)."""
        return cls(
            str(info.get("machine_id") or ""),
            str(info.get("boot_id") or ""),
            str(info.get("pid_ns") or ""),
        )


def _first_line(*paths: str) -> str:
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return ""


@functools.cache
def this_machine() -> Machine:
    """The machine this process runs on (read once)."""
    try:
        pid_ns = os.readlink(PID_NS_LINK)
    except OSError:
        pid_ns = ""
    return Machine(_first_line(*MACHINE_ID_FILES), _first_line(BOOT_ID_FILE), pid_ns)
