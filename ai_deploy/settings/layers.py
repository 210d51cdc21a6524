"""Each host's settings, assembled at one point for every command and every kind of target
(`-i` any inventory file, `--host`, an environment's `hosts`, GCP): the pyinfra run (through
ai_deploy.settings.pyinfra_main, or deploy.py's first check on a plain `pyinfra` run), the CI
entry's settings probe and the day-2 commands all build pyinfra's HostData here.

Layers, highest first (pyinfra's HostData takes the first that holds a name):
  --data (pyinfra's override data)
  derived from app_name (ai_deploy.settings.derive: only what every layer below leaves None)
  the SSH environment variables (ai_deploy.settings.ssh)
  ai-deploy.toml's [environments.<env>] table (with ssh_user, ssh_key)
  ai-deploy.toml's top level
  the inventory's own host data
  group data pyinfra found (group_data/ beside the inventory or in the working directory)
  the project's group_data/<group>.py for each of the host's groups
  group_data/all.py as pyinfra found it, then the project's (the defaults)
  the known_hosts file for host keys learnt on first use (when nothing else names one)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ai_deploy.project import project_dir
from ai_deploy.settings.appfile import ENVIRONMENTS, AppSettings, chosen_environment
from ai_deploy.settings.appfile import load_app_settings as _load_app_settings
from ai_deploy.settings.check import DATA, SettingsError, read_group_file
from ai_deploy.settings.derive import SOURCE as DERIVED_SOURCE
from ai_deploy.settings.derive import derived_values
from ai_deploy.settings.localpaths import missing_files, resolve_paths
from ai_deploy.settings.ssh import KNOWN_HOSTS, env_ssh_layers, known_hosts_path, say_once

KNOWN_HOSTS_DEFAULT = "ai-deploy's known_hosts"
MARK = "_ai_deploy_layered"  # set on an inventory whose hosts' data were assembled here
LAYERS_ATTR = "_ai_deploy_layers"  # each host's layers, highest first, for messages


@dataclass(frozen=True)
class Layer:
    source: str  # how messages and `ai-deploy config` name it
    values: Mapping[str, Any]


@dataclass(frozen=True)
class RunLayers:
    """What a run adds above the inventory's own data, lowest first: ai-deploy.toml, its
    environment's table, each SSH environment variable that is set."""

    app: AppSettings
    environment: str | None
    layers: tuple[Layer, ...]
    known_hosts: Path

    @property
    def hosts(self) -> list[str]:
        """The chosen environment's hosts (empty without one)."""
        return list(self.app.environment(self.environment).hosts) if self.environment else []

    def ssh_data(self) -> dict[str, Any]:
        """The ssh_* values of these layers merged: what an inventory needs before it
        connects (ai-deploy.toml's ssh_user and ssh_key, overridden by the variables)."""
        merged: dict[str, Any] = {}
        for layer in self.layers:
            merged.update({k: v for k, v in layer.values.items() if k.startswith("ssh_")})
        return merged


def run_layers(
    environ: Mapping[str, str] | None = None, cwd: Path | None = None, environment: str = ""
) -> RunLayers:
    """The layers of this run: the settings file found from CWD (or AI_DEPLOY_SETTINGS), the
    chosen environment (ENVIRONMENT, else AI_DEPLOY_ENVIRONMENT, else production when the file
    has it) and the SSH variables of ENVIRON; SettingsError naming each problem."""
    env = os.environ if environ is None else environ
    here = Path.cwd() if cwd is None else cwd
    app = _load_app_settings(here, env)
    chosen = chosen_environment(app, env, environment)
    layers = [Layer(app.label, app.settings)]
    if chosen is not None:
        table = app.environment(chosen)
        layers.append(Layer(f"{app.label} [{ENVIRONMENTS}.{chosen}]", table.settings))
    layers += [Layer(name, values) for name, values in env_ssh_layers(env, here)]
    return RunLayers(app, chosen, tuple(layers), known_hosts_path(env))


@lru_cache(maxsize=8)
def _group_file(path: str, mtime_ns: int) -> dict[str, Any]:
    return read_group_file(Path(path))


def project_group(name: str) -> dict[str, Any]:
    """The project's group_data/NAME.py ({} when there is none)."""
    path = project_dir() / "group_data" / f"{name}.py"
    return _group_file(str(path), path.stat().st_mtime_ns) if path.is_file() else {}


def host_layers(host: Any, run: RunLayers) -> list[Layer]:
    """HOST's layers below --data and the derived values, highest first. The inventory's
    layers are read when asked (pyinfra's own HostData does the same)."""
    inv = host.inventory
    groups = [g for g in host.groups if g != "all"]
    live = _Live
    return [
        *(Layer(layer.source, layer.values) for layer in reversed(run.layers)),
        Layer(f"inventory data of {host.name}", live(lambda: inv.get_host_data(host.name))),
        *(Layer(f"group data of {g}", live(lambda g=g: inv.get_group_data(g))) for g in groups),
        *(Layer(f"group_data/{g}.py", project_group(g)) for g in groups),
        Layer("group data of all", live(inv.get_data)),
        Layer("default (group_data/all.py)", project_group("all")),
        Layer(KNOWN_HOSTS_DEFAULT, {KNOWN_HOSTS: str(run.known_hosts)}),
    ]


class _Live(Mapping[str, Any]):
    """A mapping read through GET each time (the inventory's data may change after loading)."""

    def __init__(self, get: Callable[[], Mapping[str, Any]]) -> None:
        self._get = get

    def now(self) -> Mapping[str, Any]:
        """The mapping as it is now (one read, for merging)."""
        return self._get()

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Any:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def merged(layers: list[Layer]) -> dict[str, Any]:
    """LAYERS (highest first) merged into one mapping."""
    out: dict[str, Any] = {}
    for layer in reversed(layers):
        values = layer.values
        out.update(values.now() if isinstance(values, _Live) else values)
    return out


def source_of(name: str, layers: list[Layer]) -> str:
    """The source of the layer NAME's value comes from (LAYERS highest first)."""
    return next((layer.source for layer in layers if name in layer.values), "nowhere")


def apply_settings(
    inventory: Any, run: RunLayers | None = None, *, connecting: bool = True
) -> None:
    """Give every host of INVENTORY (a pyinfra Inventory) its data as this module's docstring
    layers it; once per inventory. SettingsError naming the setting, its source and the path,
    for each file setting whose file is not there (before anything is connected). CONNECTING:
    ai-deploy's known_hosts is made ready (and named) for the hosts that will use it."""
    if getattr(inventory, MARK, False):
        return
    from pyinfra.api.host import HostData

    run = run_layers() if run is None else run
    problems: list[str] = []
    cwd = Path.cwd()
    for host in inventory:
        below = host_layers(host, run)
        top = Layer(DATA, resolve_paths(inventory.get_override_data(), cwd))

        def derived(given: list[Layer] = [top, *below]) -> dict[str, Any]:  # noqa: B006
            return derived_values(merged(given))

        host.data = HostData(
            host, top.values, derived, *(x.values for x in below), host.get_deploy_data
        )
        every = [top, Layer(DERIVED_SOURCE, derived()), *below]
        setattr(host, LAYERS_ATTR, every)
        problems += [f"{host.name}: {p}" for p in missing_files(merged(every), _sources(every))]
        over_ssh = "ssh" in getattr(host.connector_cls, "__name__", "").lower()
        if connecting and over_ssh and host.data.get(KNOWN_HOSTS) == str(run.known_hosts):
            _prepare_known_hosts(run.known_hosts)
    if problems:
        raise SettingsError(sorted(set(problems), key=problems.index))
    setattr(inventory, MARK, True)


def _sources(layers: list[Layer]) -> dict[str, str]:
    return {name: source_of(name, layers) for name in ("env_file", "ssh_key")}


def _prepare_known_hosts(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
    say_once(f"SSH host keys are checked against {path} (a new host's key is added on first use)")


def ssh_hint(host: Any) -> str:
    """For a failure to connect to HOST: the user and key it tried, where each was set, and
    the settings to change (ai_deploy.settings.ssh)."""
    from ai_deploy.settings.ssh import KEY, USER, ssh_failure_hint

    layers: list[Layer] = getattr(host, LAYERS_ATTR, [])
    data = host.data
    return ssh_failure_hint(
        data.get(USER), source_of(USER, layers), data.get(KEY), source_of(KEY, layers)
    )


def source_in(data: Any, name: str) -> str:
    """Where NAME's value in DATA (a host's HostData assembled here) was set."""
    host = data.__dict__.get("host")
    return source_of(name, getattr(host, LAYERS_ATTR, []))
