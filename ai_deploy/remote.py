"""Reaching the hosts of a pyinfra inventory from the `ai-deploy` commands (status, lock):
the same inventory files and group_data that `pyinfra INVENTORY deploy.py` uses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = "inventories/prod.py"


class RemoteError(Exception):
    """An inventory could not be loaded or its hosts reached; the message says which."""


@dataclass
class HostRun:
    """A connected host and a way to run shell on it as root."""

    name: str
    host: Any

    @property
    def data(self) -> Any:
        return self.host.data

    def run(self, script: str, timeout: float = 60) -> tuple[bool, list[str], list[str]]:
        from pyinfra.api import StringCommand

        ok, out = self.host.run_shell_command(StringCommand(script), _sudo=True, _timeout=timeout)
        return ok, list(out.stdout_lines), list(out.stderr_lines)


def project_dir() -> Path:
    """The directory holding deploy.py, tasks/ and group_data/ (this checkout)."""
    if not (REPO / "deploy.py").is_file():
        raise RemoteError(f"deploy.py not found in {REPO}: run ai-deploy from its checkout")
    return REPO


def resolve_inventory(inventory: str | None) -> str:
    path = Path(inventory or DEFAULT_INVENTORY)
    if not path.is_absolute() and not path.exists():
        path = project_dir() / path
    if not path.is_file():
        raise RemoteError(f"inventory {inventory or DEFAULT_INVENTORY} not found")
    return str(path.resolve())


@contextmanager
def connected(inventory: str | None, data: dict[str, str] | None = None) -> Iterator[list[HostRun]]:
    """Connect to every host of INVENTORY (with group_data from this checkout)."""
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    inv_path = resolve_inventory(inventory)
    cwd = str(project_dir())
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        state = State()
        with ctx_state.use(state):
            inv = make_inventory(inv_path, override_data=data or {}, cwd=cwd)
            state.init(inv, Config())
            connect_all(state)
            hosts = [HostRun(h.name, h) for h in inv if h in state.activated_hosts]
            missing = [h.name for h in inv if h not in state.activated_hosts]
            if missing:
                raise RemoteError(f"could not connect to {', '.join(missing)}")
            try:
                yield hosts
            finally:
                disconnect_all(state)
    finally:
        os.chdir(old_cwd)


def pyinfra_command(inventory: str, data: Sequence[str], *, dry: bool = False) -> list[str]:
    """`pyinfra -y INVENTORY deploy.py --data k=v ... [--dry]`, run from project_dir()."""
    cmd = [str(Path(sys.executable).with_name("pyinfra")), "-y", inventory, "deploy.py"]
    for item in data:
        cmd += ["--data", item]
    if dry:
        cmd.append("--dry")
    return cmd


def run_pyinfra(inventory: str | None, data: dict[str, str]) -> int:
    """Run deploy.py on INVENTORY with DATA from the checkout, output streamed."""
    items = [f"{key}={value}" for key, value in data.items()]
    cmd = pyinfra_command(resolve_inventory(inventory), items)
    return subprocess.run(cmd, cwd=project_dir(), check=False).returncode
