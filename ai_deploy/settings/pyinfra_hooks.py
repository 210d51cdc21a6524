"""The checks a plain `pyinfra INVENTORY deploy.py` run makes: inventories/prod.py checks before
anything is connected (group_data, ai-deploy.toml, the raw `--data` of pyinfra's command line),
and deploy.py checks each host's data layers before its first operation, for any inventory.
Both stop the run with SystemExit, whose message pyinfra prints as it is."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_deploy.project import project_dir
from ai_deploy.settings.appfile import DEFAULT_ENVIRONMENT, ENVIRONMENT_ENV, load_app_settings
from ai_deploy.settings.check import (
    DATA,
    SettingsError,
    check_data,
    check_group_dir,
    check_values,
    read_group_file,
)


def _stop(where: str, problems: Sequence[str]) -> SystemExit:
    lines = "\n".join(f"  {p}" for p in problems)
    return SystemExit(f"{where}: invalid settings, nothing was changed:\n{lines}")


def cli_data() -> list[str] | None:
    """The raw `--data` items of the pyinfra command line running now (pyinfra's CLI is a click
    command, whose parameters click keeps in its current context); None outside it."""
    try:
        import click
    except ImportError:
        return None
    ctx = click.get_current_context(silent=True)
    if ctx is None or "data" not in ctx.params:
        return None
    return [str(item) for item in ctx.params["data"] or ()]


@dataclass(frozen=True)
class InventorySettings:
    """What an inventory adds to its hosts: HOST_DATA from ai-deploy.toml, and, when pyinfra
    will not find the project's group_data (run from another directory), GROUP_DATA by group
    name (all, and the inventory's own group), read from the project's files."""

    host_data: dict[str, Any] = field(default_factory=dict)
    group_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # the environment's, from ai-deploy.toml
    environment: str | None = None


def inventory_settings(inventory_file: str) -> InventorySettings:
    """Check the settings of a run of INVENTORY_FILE before anything is connected; SystemExit
    naming each problem."""
    inventory = Path(inventory_file).resolve()
    project_group_data = inventory.parent.parent / "group_data"
    if not project_group_data.is_dir():
        project_group_data = project_dir() / "group_data"
    cwd = Path.cwd()
    seen_by_pyinfra = {(cwd / "group_data").resolve(), (inventory.parent / "group_data").resolve()}
    problems = check_group_dir(project_group_data)
    if (cwd / "group_data").resolve() != project_group_data.resolve():
        problems += check_group_dir(cwd / "group_data", label=str(cwd / "group_data"))
    app_data: dict[str, Any] = {}
    hosts: list[str] = []
    chosen = os.environ.get(ENVIRONMENT_ENV, "").strip() or None
    try:
        app = load_app_settings(cwd)
        app_data = dict(app.settings)
        if chosen is None and DEFAULT_ENVIRONMENT in app.environments:
            chosen = DEFAULT_ENVIRONMENT
        if chosen is not None:
            env = app.environment(chosen)
            app_data.update(env.settings)
            hosts = list(env.hosts)
    except SettingsError as exc:
        problems += exc.problems
    problems += check_data(cli_data() or [])
    if problems:
        raise _stop(inventory.name, problems)
    groups: dict[str, dict[str, Any]] = {}
    if project_group_data.resolve() not in seen_by_pyinfra:
        for name in ("all", inventory.stem):
            path = project_group_data / f"{name}.py"
            if path.is_file():
                groups[name] = read_group_file(path)
    return InventorySettings(app_data, groups, hosts, chosen)


def _override_problems(values: Mapping[str, Any]) -> list[str]:
    raw = cli_data()
    if raw is not None:
        return check_data(raw)
    # pyinfra has already read the text: numbers pass for string settings, as they read back
    text = {k: str(v) for k, v in values.items() if isinstance(v, (int, float))}
    return check_values(DATA, values, raw=text)


def check_host(host: Any) -> None:
    """SystemExit naming each unknown or ill-kinded setting in HOST's data (pyinfra's layers:
    --data, the inventory's host data, group data, all.py), or group_data/all.py not loaded."""
    inv = host.inventory
    if "app_root" not in host.data.dict():
        raise SystemExit(
            f"deploy.py: host {host.name} has none of group_data/all.py's settings: pyinfra "
            "reads group_data/ from the current directory and from the inventory's directory; "
            f"run pyinfra from {project_dir()} (or pass --chdir {project_dir()})"
        )
    problems = _override_problems(inv.get_override_data())
    problems += check_values(f"inventory data of {host.name}", inv.get_host_data(host.name))
    for group in host.groups:
        problems += check_values(f"group_data/{group}.py", inv.get_group_data(group))
    problems += check_values("group_data/all.py", inv.get_data())
    if problems:
        raise _stop("deploy.py", sorted(set(problems), key=problems.index))
