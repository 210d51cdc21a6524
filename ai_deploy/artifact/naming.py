"""The name an artifact's file carries, `<name>-<id>.tar.gz`: the app's own name, its
pyproject.toml `[project] name` (normalized as package indexes do: lower case, runs of `-_.`
as one `-`), read from the source directory when building and from the archive when reading
the id back. An app without one is named `app`."""

from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

FALLBACK_NAME = "app"
_PYPROJECT_MAX_BYTES = 1 << 20


def normalized(name: str) -> str:
    """NAME as package indexes compare names (PEP 503): `Sentiment_API` -> `sentiment-api`."""
    return re.sub(r"[-_.]+", "-", name).lower().strip("-")


def project_name(pyproject_text: str) -> str | None:
    """The normalized `[project] name` of a pyproject.toml's text; None without a usable one."""
    try:
        name = tomllib.loads(pyproject_text).get("project", {}).get("name")
    except (tomllib.TOMLDecodeError, AttributeError):
        return None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name.strip()):
        return None
    return normalized(name.strip()) or None


def source_name(src: Path) -> str:
    """The name of the artifact built from the app directory SRC."""
    try:
        text = (src / "pyproject.toml").read_text()
    except (OSError, UnicodeDecodeError):
        return FALLBACK_NAME
    return project_name(text) or FALLBACK_NAME


def shipped_name(path: Path) -> str | None:
    """The name of the app the archive at PATH ships (its top-level pyproject.toml); None when
    it cannot be read."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name != "pyproject.toml":
                    continue
                data = tar.extractfile(member) if member.isfile() else None
                if data is None or member.size > _PYPROJECT_MAX_BYTES:
                    return None
                return project_name(data.read().decode())
    except (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeDecodeError):
        return None
    return None
