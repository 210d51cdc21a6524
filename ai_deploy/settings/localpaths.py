"""Settings that name files on the deployer (env_file, ssh_key, artifact): a relative path in
ai-deploy.toml is taken from the file's directory, one given on the command line (`--data
env_file=.env`) from the working directory. Both are made absolute on the deployer before
anything is connected, so a run in another directory (pyinfra runs in the project's) reads the
same file; a file that is not there stops the run before any lock is taken."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PATH_SETTINGS = ("env_file", "ssh_key", "artifact")
# Read by the run itself: a missing one stops it first. (artifact is checked by the deploy.)
MUST_EXIST = ("env_file", "ssh_key")


def absolute(value: str, base: Path) -> str:
    """VALUE (~ expanded) as an absolute path, taken from BASE when relative."""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def resolve_paths(values: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """VALUES with each path setting that holds text made absolute against BASE."""
    out = dict(values)
    for name in PATH_SETTINGS:
        value = out.get(name)
        if isinstance(value, str) and value.strip():
            out[name] = absolute(value.strip(), base)
    return out


def resolve_data_items(items: Iterable[str], base: Path) -> list[str]:
    """`--data KEY=VALUE` ITEMS with the value of each path setting made absolute against
    BASE (the working directory they were given in); other items unchanged."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key.strip() in PATH_SETTINGS and value.strip():
            item = f"{key}={absolute(value.strip(), base)}"
        out.append(item)
    return out


def missing_files(values: Mapping[str, Any], source_of: Mapping[str, str]) -> list[str]:
    """A line per file setting in VALUES whose file is not there, naming the setting, where
    it was set (SOURCE_OF) and the path it was resolved to."""
    problems = []
    for name in MUST_EXIST:
        value = values.get(name)
        if not value or Path(str(value)).is_file():
            continue
        where = source_of.get(name, "the inventory")
        problems.append(
            f"{name} = {value} (from {where}): no such file; paths in ai-deploy.toml are "
            "relative to its directory, those on the command line to the working directory"
        )
    return problems
