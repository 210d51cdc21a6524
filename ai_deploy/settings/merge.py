"""Every setting's value for a run, with where it came from, lowest precedence first:
group_data/all.py (the default), group_data/<group>.py, ai-deploy.toml, its
[environments.<env>] table, the SSH variables, `--data`, then what is derived from app_name.
The pyinfra run and every command layer a host's data the same way
(ai_deploy.settings.layers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_deploy.project import project_dir
from ai_deploy.settings.appfile import HOSTS, AppSettings, load_app_settings
from ai_deploy.settings.check import (
    DATA,
    SettingsError,
    check_data,
    check_group_dir,
    parse_data,
    raise_for,
    read_group_file,
)
from ai_deploy.settings.derive import SOURCE as DERIVED_SOURCE
from ai_deploy.settings.derive import derived_values
from ai_deploy.settings.layers import run_layers
from ai_deploy.settings.localpaths import missing_files, resolve_paths
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
    """Each setting's merged value and source for ENVIRONMENT ("" for the default one) with
    `--data` DATA (paths taken from CWD), the app settings file found from CWD and
    group_data/GROUP.py, layered as ai_deploy.settings.layers layers a host's data (the SSH
    variables, the environment's hosts, ssh_user and ssh_key included; the names derived from
    app_name last); SettingsError naming every problem first, a file setting whose file is not
    there included."""
    check_all(data, cwd, environ)
    run = run_layers(environ, cwd, environment)
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
    for index, found in enumerate(run.layers):
        layer(found.values, found.source)
        if index == 1 and run.environment:  # the environment's table
            layer({HOSTS: run.hosts}, found.source)
    layer(resolve_paths(parse_data(data)[0], cwd), DATA)
    values = {name: s.value for name, s in merged.items()}
    layer(derived_values(values), DERIVED_SOURCE)
    raise_for(missing_files(values, {name: s.source for name, s in merged.items()}))
    return merged
