"""The app's settings file, `ai-deploy.toml` (in the current directory, or at AI_DEPLOY_SETTINGS):
top-level keys are settings (the names of group_data/all.py); `[environments.<name>]` tables
hold one environment's overrides, its `hosts = [...]` (addresses) and how to reach them
(`ssh_user`, `ssh_key`: a path). Paths (env_file, ssh_key) are relative to the file's directory.

    app_name = "sentiment"
    env_file = ".env"

    [environments.production]
    hosts = ["203.0.113.10"]
    ssh_user = "deploy"
    ssh_key = "keys/deploy_ed25519"
    health_deadline_s = 900
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_deploy.settings.check import SettingsError, check_values
from ai_deploy.settings.localpaths import resolve_paths

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

FILENAME = "ai-deploy.toml"
PATH_ENV = "AI_DEPLOY_SETTINGS"
ENVIRONMENTS = "environments"
HOSTS = "hosts"
SSH_SETTINGS = ("ssh_user", "ssh_key")  # how an environment's hosts are reached: strings
# `-e/--environment` of every command; without it, production when the file has that table.
ENVIRONMENT_ENV = "AI_DEPLOY_ENVIRONMENT"
DEFAULT_ENVIRONMENT = "production"


@dataclass(frozen=True)
class Environment:
    name: str
    settings: dict[str, Any]
    hosts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AppSettings:
    """A checked settings file: LABEL names it in messages and as a source."""

    path: Path | None
    settings: dict[str, Any] = field(default_factory=dict)
    environments: dict[str, Environment] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.path.name if self.path else FILENAME

    def environment(self, name: str) -> Environment:
        """Environment NAME; SettingsError naming the ones there are when it is missing."""
        if name not in self.environments:
            have = ", ".join(sorted(self.environments)) or "none"
            where = str(self.path) if self.path else f"no {FILENAME} found"
            raise SettingsError(
                [f"{self.label}: no [{ENVIRONMENTS}.{name}] ({where}; environments: {have})"]
            )
        return self.environments[name]


def settings_path(cwd: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """AI_DEPLOY_SETTINGS when set (it must exist), else CWD/ai-deploy.toml when it exists."""
    env = os.environ if environ is None else environ
    named = env.get(PATH_ENV, "").strip()
    if named:
        path = Path(named).expanduser()
        path = path if path.is_absolute() else cwd / path
        if not path.is_file():
            raise SettingsError([f"{PATH_ENV}={named}: no such file"])
        return path
    found = cwd / FILENAME
    return found if found.is_file() else None


def _ssh_problems(where: str, values: dict[str, Any]) -> list[str]:
    return [
        f"{where}: {key}: expected a non-empty string, got {values[key]!r}"
        for key in SSH_SETTINGS
        if key in values and not (isinstance(values[key], str) and values[key].strip())
    ]


def _environment(
    label: str, name: str, table: Any, base: Path
) -> tuple[Environment | None, list[str]]:
    where = f"{label} [{ENVIRONMENTS}.{name}]"
    if not isinstance(table, dict):
        return None, [f"{where}: expected a table of settings, got {table!r}"]
    values = dict(table)
    hosts = values.pop(HOSTS, [])
    problems: list[str] = []
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h.strip() for h in hosts):
        problems.append(f"{where}: {HOSTS}: expected a list of addresses, got {hosts!r}")
        hosts = []
    problems += _ssh_problems(where, values) + check_values(where, values)
    return Environment(name, resolve_paths(values, base), [h.strip() for h in hosts]), problems


def parse_app_settings(text: str, path: Path | None = None) -> AppSettings:
    """The settings in TEXT (the content of PATH), checked; SettingsError naming each bad key.
    Paths in it are made absolute against PATH's directory (the working directory without)."""
    label = path.name if path else FILENAME
    base = path.resolve().parent if path else Path.cwd()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{label}: not valid TOML: {exc}"]) from None
    tables = doc.pop(ENVIRONMENTS, {})
    problems: list[str] = []
    if HOSTS in doc:
        problems.append(f"{label}: {HOSTS} belongs in an [{ENVIRONMENTS}.<name>] table")
        doc.pop(HOSTS)
    problems += _ssh_problems(label, doc) + check_values(label, doc)
    envs: dict[str, Environment] = {}
    if not isinstance(tables, dict):
        problems.append(f"{label}: {ENVIRONMENTS}: expected [{ENVIRONMENTS}.<name>] tables")
        tables = {}
    for name, table in tables.items():
        env, found = _environment(label, name, table, base)
        problems += found
        if env is not None:
            envs[name] = env
    if problems:
        raise SettingsError(problems)
    return AppSettings(path, resolve_paths(doc, base), envs)


def load_app_settings(cwd: Path, environ: Mapping[str, str] | None = None) -> AppSettings:
    """The app's settings file for CWD, checked (an empty AppSettings when there is none)."""
    path = settings_path(cwd, environ)
    if path is None:
        return AppSettings(None)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError([f"{path}: cannot be read: {exc}"]) from None
    return parse_app_settings(text, path)


def chosen_environment(
    app: AppSettings, environ: Mapping[str, str] | None = None, given: str = ""
) -> str | None:
    """The environment a run uses: GIVEN (-e), else AI_DEPLOY_ENVIRONMENT, else production when
    the file has that table; None for none."""
    env = os.environ if environ is None else environ
    name = given.strip() or env.get(ENVIRONMENT_ENV, "").strip()
    if not name and DEFAULT_ENVIRONMENT in app.environments:
        name = DEFAULT_ENVIRONMENT
    return name or None
