"""Setting values: `--data` text read the way pyinfra reads it, and a value checked against
what its setting takes."""

from __future__ import annotations

import json
from typing import Any

from ai_deploy.settings.rules import rule_problem
from ai_deploy.settings.schema import Declared

_SCALARS = (str, int, float, bool)


def parse_cli_value(text: str) -> Any:
    """TEXT as pyinfra's `--data key=TEXT` gives it to the deploy (pyinfra_cli.util.
    parse_cli_arg, mirrored: importing pyinfra_cli patches the process with gevent): true/false
    in any case, else an integer, else JSON (a list, a float, null, a quoted string), else the
    text itself."""
    if text.lower() == "false":
        return False
    if text.lower() == "true":
        return True
    try:
        return int(text)
    except (TypeError, ValueError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _item_ok(kind: str | None, value: Any) -> bool:
    if kind == "int":
        return _is_int(value)
    if kind == "number":
        return _is_number(value)
    return isinstance(value, str)


def _fits(spec: Declared, value: Any) -> bool:
    kind = spec.kind
    if value is None:
        return spec.optional
    if kind == "int":
        return _is_int(value)
    if kind == "number":
        return _is_number(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "choice":
        return isinstance(value, str) and value in spec.choices
    if kind in ("list", "tuple"):
        if not isinstance(value, (list, tuple)):
            return False
        if spec.length is not None and len(value) != spec.length:
            return False
        return all(_item_ok(spec.item, v) for v in value)
    if kind == "dict":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, _SCALARS) for k, v in value.items()
        )
    return True


def value_problem(spec: Declared, value: Any, raw: str | None = None) -> str | None:
    """Why VALUE does not fit SPEC ("expected an integer, got 'eighty'"), or None when it does.
    RAW: the `--data` text VALUE was read from; pyinfra hands a string setting given "570" the
    integer 570, which is accepted when it reads back as the same text. A value of the right
    kind must also keep its setting's rule (ai_deploy.settings.rules)."""
    why = _kind_problem(spec, value, raw)
    if why is None and spec.kind == "str" and raw is not None and _is_number(value):
        value = raw
    return why or rule_problem(spec.name, value)


def _kind_problem(spec: Declared, value: Any, raw: str | None) -> str | None:
    if _fits(spec, value):
        return None
    if raw is not None and spec.kind in ("str", "choice") and _is_number(value):
        if str(value) == raw and _fits(spec, raw):
            return None
        if str(value) != raw:
            return (
                f"expected {spec.expected}, got {raw!r}, which pyinfra reads as the number "
                f"{value!r}; quote it: --data '{spec.name}=\"{raw}\"'"
            )
    shown = raw if raw is not None and not isinstance(value, str) else value
    return f"expected {spec.expected}, got {shown!r}"
