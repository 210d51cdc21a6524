"""Checking settings against the schema: each unknown name (with the nearest known one) and each
value of the wrong kind, named with where it was given (a group_data file, `--data`,
ai-deploy.toml)."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ai_deploy.settings.schema import Declared, load_schema
from ai_deploy.settings.values import parse_cli_value, value_problem

DATA = "--data"


class SettingsError(Exception):
    """Settings that cannot be used; `problems` holds one line each, naming where and which."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@lru_cache(maxsize=1)
def _connector_prefixes() -> tuple[str, ...]:
    """pyinfra's connectors read their host data under their own name (ssh_user, docker_...)."""
    names = {ep.name for ep in entry_points(group="pyinfra.connectors")} | {"ssh", "winrm"}
    return tuple(f"{name}_" for name in sorted(names))


def is_pyinfra_key(name: str) -> bool:
    """NAME belongs to pyinfra: an operation argument (_sudo) or a connector's data (ssh_*)."""
    return name.startswith("_") or name.startswith(_connector_prefixes())


# Settings that were replaced: their old name says which one to set instead.
REPLACED = {
    "unit_graceful_shutdown_s": "drain_timeout_s",
    "unit_stop_timeout_s": "drain_timeout_s (the stop timeout follows it, 15 s above)",
}


def unknown_key(where: str, name: str, schema: Mapping[str, Declared]) -> str:
    if name in REPLACED:
        return f"{where}: setting {name!r} was replaced: set {REPLACED[name]} instead"
    close = difflib.get_close_matches(name, list(schema), n=3)
    # letters swapped (app_prot) are nearer to app_port than difflib's tie-break says
    close.sort(key=lambda known: sorted(known) != sorted(name))
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown setting {name!r}{hint}"


def check_values(
    where: str,
    values: Mapping[str, Any],
    schema: Mapping[str, Declared] | None = None,
    raw: Mapping[str, str] | None = None,
) -> list[str]:
    """A line per unknown name or ill-kinded value in VALUES, given in WHERE. RAW: the text each
    value was read from (`--data`)."""
    schema = load_schema() if schema is None else schema
    problems: list[str] = []
    for name, value in values.items():
        if name in schema:
            why = value_problem(schema[name], value, (raw or {}).get(name))
            if why:
                problems.append(f"{where}: {name}: {why}")
        elif not is_pyinfra_key(name):
            problems.append(unknown_key(where, name, schema))
    return problems


def _parse(items: Iterable[str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    values: dict[str, Any] = {}
    raw: dict[str, str] = {}
    problems: list[str] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{DATA} {item}: expected KEY=VALUE")
            continue
        values[key], raw[key] = parse_cli_value(text), text
    return values, raw, problems


def parse_data(items: Iterable[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`--data KEY=VALUE` items as pyinfra reads them (values, and the text of each);
    SettingsError for an item with no `=` or no key, which pyinfra would stop on with a
    traceback."""
    values, raw, problems = _parse(items)
    raise_for(problems)
    return values, raw


def check_data(items: Iterable[str], schema: Mapping[str, Declared] | None = None) -> list[str]:
    """A line per malformed item, unknown name or ill-kinded value in `--data` ITEMS."""
    values, raw, problems = _parse(items)
    return problems + check_values(DATA, values, schema, raw)


def read_group_file(path: Path) -> dict[str, Any]:
    """The data a group_data file gives pyinfra: its top-level names, less dunders and what it
    imported (modules, functions, classes), as pyinfra_cli.inventory reads it."""
    scope: dict[str, Any] = {"__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return {
        k: v
        for k, v in scope.items()
        if not k.startswith("__")
        and not isinstance(v, (types.ModuleType, type, types.FunctionType))
    }


def check_group_dir(
    directory: Path, schema: Mapping[str, Declared] | None = None, label: str = "group_data"
) -> list[str]:
    """A line per unknown name or ill-kinded value in DIRECTORY/*.py (all.py is the schema's
    own source: its names are known by definition, its values are checked all the same)."""
    problems: list[str] = []
    if not directory.is_dir():
        return problems
    for path in sorted(directory.glob("*.py")):
        try:
            values = read_group_file(path)
        except Exception as exc:
            problems.append(f"{label}/{path.name}: cannot be read: {type(exc).__name__}: {exc}")
            continue
        problems += check_values(f"{label}/{path.name}", values, schema)
    return problems


def raise_for(problems: Sequence[str]) -> None:
    if problems:
        raise SettingsError(problems)
