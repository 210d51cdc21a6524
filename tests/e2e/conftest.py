"""Fixtures for end-to-end tests: fresh sandbox hosts booted from the cached base image."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.hosts import Host


@dataclass
class Sandbox:
    """One booted sandbox host and the inventory `sandbox up` wrote for it."""

    host: Host
    inventory: Path

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def name(self) -> str:
        return self.host.name

    def ssh(self, command: str, *, check: bool = True, timeout: float = 300.0) -> str:
        return hosts.ssh(self.address, command, check=check, timeout=timeout)

    def sudo(self, command: str, *, check: bool = True, timeout: float = 300.0) -> str:
        return self.ssh(f"sudo -n sh -c {shlex.quote(command)}", check=check, timeout=timeout)

    def put(self, local: Path, remote: str) -> None:
        subprocess.run(
            ["scp", "-q", *hosts.ssh_options(), str(local), f"ubuntu@{self.address}:{remote}"],
            check=True,
            timeout=120,
        )


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("e2e tests boot systemd-nspawn hosts and need root (run them as root)")


def unique_name(label: str) -> str:
    digest = hashlib.sha1(f"{label}-{os.getpid()}".encode()).hexdigest()[:8]
    return f"t{digest}"


def boot(label: str, count: int = 1) -> tuple[list[Host], Path]:
    require_root()
    return hosts.up(count=count, name=unique_name(label))


@pytest.fixture(scope="module")
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A fresh host for the test module, removed afterwards."""
    started, inventory = boot(request.module.__name__)
    try:
        yield Sandbox(started[0], inventory)
    finally:
        hosts.down([h.name for h in started])


@pytest.fixture
def fresh_sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A fresh host for one test, removed afterwards."""
    started, inventory = boot(request.node.nodeid)
    try:
        yield Sandbox(started[0], inventory)
    finally:
        hosts.down([h.name for h in started])
