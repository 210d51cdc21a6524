"""Every setting's value for a run, with where it came from, lowest precedence first:
group_data/all.py (the default), group_data/<group>.py, ai-deploy.toml, its
[environments.<env>] table, `--data`. The pyinfra run layers them the same way (the inventory
puts ai-deploy.toml into host data, which pyinfra ranks above group data and below --data)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_deploy.project import project_dir
from ai_deploy.settings.appfile import (
    DEFAULT_ENVIRONMENT,
    ENVIRONMENT_ENV,
    ENVIRONMENTS,
    AppSettings,
    load_app_settings,
)
from ai_deploy.settings.check import (
    DATA,
    SettingsError,
    check_data,
    check_group_dir,
    parse_data,
    raise_for,
    read_group_file,
)
from ai_deploy.settings.schema import load_schema

DEFAULT_GROUP = "prod"  # the group of inventories/prod.py


@dataclass(frozen=True)
class Setting:
    name: str
    value: Any
    source: str  # "default (group_data/all.py)", "group_data/prod.py", "--data", ...
    comment: str = ""


def check_all(
    data: Sequence[str], cwd: Path, environ: Mapping[str, str] | None = None
) -> AppSettings:
    """The checked app settings file for CWD; SettingsError with a line per problem in the
    project's group_data files, that file and `--data` DATA, all found in one pass."""
    problems = check_group_dir(project_dir() / "group_data")
    app = AppSettings(None)
    try:
        app = load_app_settings(cwd, environ)
    except SettingsError as exc:
        problems += exc.problems
    problems += check_data(data)
    raise_for(problems)
    return app


def merged_settings(
    environment: str,
    data: list[str],
    cwd: Path,
    *,
    group: str = DEFAULT_GROUP,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Setting]:
    """Each setting's merged value and source for ENVIRONMENT ("" for none) with `--data`
    DATA, the app settings file found from CWD and group_data/GROUP.py; SettingsError naming
    every problem first."""
    app = check_all(data, cwd, environ)
    schema = load_schema()
    merged = {
        name: Setting(name, spec.default, "default (group_data/all.py)", spec.comment)
        for name, spec in schema.items()
    }

    def layer(values: Mapping[str, Any], source: str) -> None:
        for name, value in values.items():
            if name.startswith("_"):
                continue
            comment = merged[name].comment if name in merged else ""
            merged[name] = Setting(name, value, source, comment)

    group_file = project_dir() / "group_data" / f"{group}.py"
    if group != "all" and group_file.is_file():
        layer(read_group_file(group_file), f"group_data/{group}.py")
    layer(app.settings, app.label)
    env = os.environ if environ is None else environ
    environment = environment or env.get(ENVIRONMENT_ENV, "").strip()
    if not environment and DEFAULT_ENVIRONMENT in app.environments:
        environment = DEFAULT_ENVIRONMENT
    if environment:
        layer(app.environment(environment).settings, f"{app.label} [{ENVIRONMENTS}.{environment}]")
    layer(parse_data(data)[0], DATA)
    return merged
