"""The app's `ai-deploy.toml` as `ai-deploy init` writes it: every setting of group_data/all.py
commented out with its default and its meaning, then the environments."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from ai_deploy.settings.schema import Declared, load_schema

HEADER = """\
# ai-deploy settings for this app. Every setting is listed with its default, commented out:
# uncomment a line to change it. `ai-deploy config` prints the merged values and where each
# comes from; unknown names and wrong types stop a deploy before any host is touched.
# Precedence, lowest first: the defaults, this file, its [environments.<name>] table, --data.
"""

ENVIRONMENTS = """\

# Environments: `ai-deploy deploy -e NAME` (and every other command's -e) picks one; production
# is the default. `hosts` are SSH addresses for runs outside GCP; in CI the GCP instance named
# by the workflow environment's GCP_INSTANCE secret is used instead. Any setting above may be
# overridden per environment.
[environments.production]
hosts = []

[environments.staging]
hosts = []
# health_deadline_s = 600
"""


def toml_string(text: str) -> str:
    """TEXT as a TOML basic string: every character as itself (outside the BMP too: TOML has no
    surrogate pairs, so JSON's \\ud83d\\ude00 is refused), only `"`, `\\` and control
    characters escaped. A lone surrogate (an undecodable file name) is no character: ValueError."""
    if any("\ud800" <= char <= "\udfff" for char in text):
        raise ValueError(f"{text!r} holds a byte that is not UTF-8: rename it")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'


def toml_value(value: Any) -> str:
    """VALUE as a TOML value (strings as basic strings, see toml_string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{toml_string(str(k))} = {toml_value(v)}" for k, v in value.items())
            + "}"
        )
    raise TypeError(f"no TOML form for {value!r}")


def _entry(spec: Declared) -> list[str]:
    lines = [f"# {line}" for line in textwrap.wrap(spec.comment, 94)] if spec.comment else []
    if spec.default is None:
        lines.append(f"# {spec.name} =   (unset; {spec.expected})")
    else:
        lines.append(f"# {spec.name} = {toml_value(spec.default)}")
    return lines


def render_settings_file(
    overrides: Mapping[str, Any] | None = None, skip: Sequence[str] = ()
) -> str:
    """The file's text; OVERRIDES become uncommented lines (the values init was given)."""
    out = [HEADER]
    for name, spec in load_schema().items():
        if name in skip:
            continue
        out += ["", *_entry(spec)]
        if overrides and name in overrides:
            out.append(f"{name} = {toml_value(overrides[name])}")
    return "\n".join(out) + "\n" + ENVIRONMENTS


__all__ = ["render_settings_file", "toml_string", "toml_value"]
