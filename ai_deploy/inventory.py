"""pyinfra inventories from the `ai-deploy` commands: any inventory file, loaded to read each
host's settings, to connect to the hosts, or to run deploy.py on them; every host's data is
assembled by ai_deploy.settings.layers (group_data, ai-deploy.toml, its environment, the SSH
variables, --data, names derived from app_name), as the pyinfra run assembles it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.project import DEFAULT_INVENTORY, project_dir

PYINFRA_MAIN = "ai_deploy.settings.pyinfra_main"  # pyinfra's CLI with the settings layers


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


@contextmanager
def _loaded(
    inventory: str | None, data: Mapping[str, Any] | None, *, connecting: bool = True
) -> Iterator[tuple[Any, Any]]:
    """(state, inventory) of INVENTORY with DATA as --data, each host's data assembled by
    ai_deploy.settings.layers; paths in DATA and the settings file are taken from the working
    directory before the load moves into the project (pyinfra reads group_data/ from there)."""
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    from ai_deploy.settings.appfile import PATH_ENV
    from ai_deploy.settings.check import SettingsError
    from ai_deploy.settings.layers import apply_settings, run_layers
    from ai_deploy.settings.localpaths import resolve_paths

    inv_path = resolve_inventory(inventory)
    override = resolve_paths(data or {}, Path.cwd())
    try:
        run = run_layers()
    except SettingsError as exc:
        raise RemoteError("; ".join(exc.problems)) from None
    if run.app.path is not None:  # the inventory file reads it too, from the project
        os.environ[PATH_ENV] = str(run.app.path.resolve())
    with _in_project() as cwd:
        state = State()
        with ctx_state.use(state):
            try:
                inv = make_inventory(inv_path, override_data=override, cwd=cwd)
                apply_settings(inv, run, connecting=connecting)
            except SystemExit as exc:  # an inventory file that stops with a message
                raise RemoteError(str(exc.code)) from None
            except SettingsError as exc:
                raise RemoteError("; ".join(exc.problems)) from None
            state.init(inv, Config())
            yield state, inv


def host_settings(inventory: str | None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Each host's pyinfra data (as ai_deploy.settings.layers assembles it, with DATA as
    --data), by host name, read as the pyinfra run reads it; nothing is connected. This imports
    pyinfra's CLI, which patches the standard library with gevent (see
    ai_deploy.ci.settings_probe)."""
    with _loaded(inventory, data, connecting=False) as (_, inv):
        return {h.name: h.data for h in inv}


@contextmanager
def connected(
    inventory: str | None, data: Mapping[str, Any] | None = None
) -> Iterator[list[PyinfraRemote]]:
    """Connect to every host of INVENTORY; RemoteError naming each host that cannot be
    reached, with the user and key tried and where each was set."""
    from pyinfra.api.connect import connect_all, disconnect_all

    from ai_deploy.settings.layers import ssh_hint

    with _loaded(inventory, data) as (state, inv):
        connect_all(state)
        hosts = [PyinfraRemote(h) for h in inv if h in state.activated_hosts]
        missing = [h for h in inv if h not in state.activated_hosts]
        if missing:
            disconnect_all(state)
            raise RemoteError(
                "could not connect to " + "; ".join(f"{h.name} ({ssh_hint(h)})" for h in missing)
            )
        try:
            yield hosts
        finally:
            disconnect_all(state)


@dataclass(frozen=True)
class Reached:
    """The hosts of an inventory that could be connected, and why each other one could not."""

    hosts: list[PyinfraRemote]
    unreachable: dict[str, str]  # host name -> the connect error
    names: list[str]  # every host, in the inventory's order
    addresses: dict[str, str]  # host name -> the address it is reached at (ssh_hostname)


@contextmanager
def connected_partly(
    inventory: str | None, data: Mapping[str, Any] | None = None
) -> Iterator[Reached]:
    """Connect to every host of INVENTORY that can be reached; unlike `connected`, a host that
    cannot be is named with its reason instead of stopping the command (for reports)."""
    import gevent
    from pyinfra.api.connect import disconnect_all
    from pyinfra.api.exceptions import ConnectError

    from ai_deploy.settings.layers import ssh_hint

    def attempt(h: Any) -> str | None:
        try:
            h.connect(show_errors=False, raise_exceptions=True)
        except ConnectError as exc:
            why = str(exc.args[0]) if exc.args else type(exc).__name__
            return f"{why}; {ssh_hint(h)}"
        except Exception as exc:  # a connector's own failure (a bad key file) is a reason too
            return f"{type(exc).__name__}: {exc}; {ssh_hint(h)}"
        return None if h.connected else f"not connected; {ssh_hint(h)}"

    with _loaded(inventory, data) as (state, inv):
        listed = list(inv)
        tries = [gevent.spawn(attempt, h) for h in listed]
        gevent.joinall(tries)
        reached: list[PyinfraRemote] = []
        unreachable: dict[str, str] = {}
        for h, done in zip(listed, tries, strict=True):
            reason = done.value if done.successful() else repr(done.exception)
            if reason is None:
                state.activate_host(h)
                reached.append(PyinfraRemote(h))
            else:
                unreachable[h.name] = reason
        try:
            addresses = {h.name: str(h.data.get("ssh_hostname") or h.name) for h in listed}
            yield Reached(reached, unreachable, [h.name for h in listed], addresses)
        finally:
            disconnect_all(state)


def pyinfra_command(
    inventory: str, data: Sequence[str], *, dry: bool = False, limit: Sequence[str] = ()
) -> list[str]:
    """`pyinfra -y INVENTORY deploy.py --data k=v ...` (through ai_deploy.settings.pyinfra_main,
    so every host gets its settings layers before it is connected), to run from project_dir();
    file paths in DATA are made absolute against the working directory first. DRY: `--dry`
    without `-y`, so pyinfra detects and prints the changes, then stops. LIMIT: only the hosts
    of these names (`--limit NAME` each)."""
    from ai_deploy.settings.localpaths import resolve_data_items

    cmd = [sys.executable, "-m", PYINFRA_MAIN, *(["--dry"] if dry else ["-y"])]
    for name in limit:
        cmd += ["--limit", name]
    cmd += [inventory, "deploy.py"]
    for item in resolve_data_items(data, Path.cwd()):
        cmd += ["--data", item]
    return cmd


def run_pyinfra(inventory: str | None, data: dict[str, str]) -> int:
    """Run deploy.py on INVENTORY with DATA, output streamed."""
    items = [f"{key}={value}" for key, value in data.items()]
    cmd = pyinfra_command(resolve_inventory(inventory), items)
    return subprocess.run(cmd, cwd=project_dir(), check=False).returncode
