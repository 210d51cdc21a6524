"""The checks a plain `pyinfra INVENTORY deploy.py` run makes: inventories/prod.py checks before
anything is connected (group_data, ai-deploy.toml, the raw `--data` of pyinfra's command line),
and deploy.py gives every host its settings layers (ai_deploy.settings.layers) and checks them
before its first operation, for any inventory. Both stop the run with SystemExit, whose message
pyinfra prints as it is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_deploy.project import project_dir
from ai_deploy.settings.check import (
    DATA,
    SettingsError,
    check_data,
    check_group_dir,
    check_values,
)
from ai_deploy.settings.layers import apply_settings, run_layers


def stop(where: str, problems: Sequence[str]) -> SystemExit:
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
    """What the project's inventory needs from the run's settings before it connects: the
    chosen environment's HOSTS and how to reach them (SSH, from ai-deploy.toml and the SSH
    variables). Every other setting reaches each host through ai_deploy.settings.layers."""

    ssh_data: dict[str, Any] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # the environment's, from ai-deploy.toml
    environment: str | None = None


def inventory_settings(inventory_file: str) -> InventorySettings:
    """Check the settings of a run of INVENTORY_FILE before anything is connected (the
    project's group_data, any group_data pyinfra reads from the working directory,
    ai-deploy.toml, `--data`); SystemExit naming each problem."""
    inventory = Path(inventory_file).resolve()
    project_group_data = project_dir() / "group_data"
    cwd = Path.cwd()
    problems = check_group_dir(project_group_data)
    if (cwd / "group_data").resolve() != project_group_data.resolve():
        problems += check_group_dir(cwd / "group_data", label=str(cwd / "group_data"))
    run = None
    try:
        run = run_layers()
    except SettingsError as exc:
        problems += exc.problems
    problems += check_data(cli_data() or [])
    if problems or run is None:
        raise stop(inventory.name, problems)
    return InventorySettings(run.ssh_data(), run.hosts, run.environment)


def _override_problems(values: Mapping[str, Any]) -> list[str]:
    raw = cli_data()
    if raw is not None:
        return check_data(raw)
    # pyinfra has already read the text: numbers pass for string settings, as they read back
    text = {k: str(v) for k, v in values.items() if isinstance(v, (int, float))}
    return check_values(DATA, values, raw=text)


def check_host(host: Any) -> None:
    """Give HOST's inventory the settings layers (ai_deploy.settings.layers: a plain `pyinfra`
    run has not had them yet), then SystemExit naming each unknown or ill-kinded setting in
    pyinfra's own layers (--data, the inventory's host data, group data, all.py) and each file
    setting whose file is not there."""
    inv = host.inventory
    try:
        apply_settings(inv)
    except SettingsError as exc:
        raise stop("deploy.py", exc.problems) from None
    problems = _override_problems(inv.get_override_data())
    problems += check_values(f"inventory data of {host.name}", inv.get_host_data(host.name))
    for group in host.groups:
        problems += check_values(f"group_data/{group}.py", inv.get_group_data(group))
    problems += check_values("group_data/all.py", inv.get_data())
    if problems:
        raise stop("deploy.py", sorted(set(problems), key=problems.index))
