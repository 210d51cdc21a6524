"""pyinfra inventories from the `ai-deploy` commands: the same inventory files and group_data
that `pyinfra INVENTORY deploy.py` uses, loaded to read each host's settings, to connect to the
hosts, or to run deploy.py on them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.project import DEFAULT_INVENTORY, project_dir


class RemoteError(Exception):
    """An inventory could not be loaded or its hosts reached; the message says which."""


def resolve_inventory(inventory: str | None) -> str:
    """INVENTORY as given (relative to the working directory), else inside the project."""
    path = Path(inventory or DEFAULT_INVENTORY)
    if not path.is_absolute() and not path.exists():
        path = project_dir() / path
    if not path.is_file():
        raise RemoteError(f"inventory {inventory or DEFAULT_INVENTORY} not found")
    return str(path.resolve())


@contextmanager
def _in_project() -> Iterator[str]:
    """cwd in the project (pyinfra reads group_data/ from there), put back afterwards."""
    cwd = str(project_dir())
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        yield cwd
    finally:
        os.chdir(old_cwd)


def _load(inv_path: str, data: Mapping[str, Any], cwd: str) -> Any:
    from pyinfra_cli.inventory import make_inventory

    try:
        return make_inventory(inv_path, override_data=dict(data), cwd=cwd)
    except SystemExit as exc:  # an inventory file that stops with a message
        raise RemoteError(str(exc.code)) from None


def host_settings(inventory: str | None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Each host's pyinfra data (group_data, inventory data and DATA overrides), by host name,
    read as the pyinfra run reads it; nothing is connected. This imports pyinfra's CLI, which
    patches the standard library with gevent (see ai_deploy.ci.settings_probe)."""
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state

    inv_path = resolve_inventory(inventory)
    with _in_project() as cwd:
        state = State()
        with ctx_state.use(state):
            inv = _load(inv_path, data or {}, cwd)
            state.init(inv, Config())
            return {h.name: h.data for h in inv}


@contextmanager
def connected(
    inventory: str | None, data: Mapping[str, Any] | None = None
) -> Iterator[list[PyinfraRemote]]:
    """Connect to every host of INVENTORY (with the project's group_data)."""
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.context import ctx_state

    inv_path = resolve_inventory(inventory)
    with _in_project() as cwd:
        state = State()
        with ctx_state.use(state):
            inv = _load(inv_path, data or {}, cwd)
            state.init(inv, Config())
            connect_all(state)
            hosts = [PyinfraRemote(h) for h in inv if h in state.activated_hosts]
            missing = [h.name for h in inv if h not in state.activated_hosts]
            if missing:
                raise RemoteError(f"could not connect to {', '.join(missing)}")
            try:
                yield hosts
            finally:
                disconnect_all(state)


def pyinfra_command(inventory: str, data: Sequence[str], *, dry: bool = False) -> list[str]:
    """`pyinfra -y INVENTORY deploy.py --data k=v ...`, to run from project_dir(). DRY:
    `--dry` without `-y`, so pyinfra detects and prints the changes, then stops."""
    cmd = [sys.executable, "-m", "pyinfra", *(["--dry"] if dry else ["-y"]), inventory, "deploy.py"]
    for item in data:
        cmd += ["--data", item]
    return cmd


def run_pyinfra(inventory: str | None, data: dict[str, str]) -> int:
    """Run deploy.py on INVENTORY with DATA, output streamed."""
    items = [f"{key}={value}" for key, value in data.items()]
    cmd = pyinfra_command(resolve_inventory(inventory), items)
    return subprocess.run(cmd, cwd=project_dir(), check=False).returncode
