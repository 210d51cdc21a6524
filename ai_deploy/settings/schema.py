"""The settings schema, read from group_data/all.py with `ast` (never executed): each setting's
name, default and comment, and the kind of value it takes. Kinds follow the defaults; the small
tables below say what a default cannot (the allowed values of a choice, a number of seconds
that may have a fraction, what a setting defaulting to None holds)."""

from __future__ import annotations

import ast
import io
import operator
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ai_deploy.project import project_dir

# Settings that take one of a few words (ai_deploy.host.strategies.STRATEGIES for the first;
# tests/unit/test_settings_check.py keeps the two in step).
CHOICES: dict[str, tuple[str, ...]] = {
    "deploy_strategy": ("socket", "restart", "bluegreen"),
    "drain_mode": ("wait", "cut"),
    "gpu_driver": ("auto", "skip"),
    "gpu_driver_method": ("cuda-installer", "ubuntu-drivers", "packages", "command"),
    "gpu_memory_when_short": ("restart", "refuse"),
    "ready_method": ("GET", "POST", "HEAD", "PUT"),
    "uv_python_downloads": ("never", "manual", "automatic"),
}
# Integer defaults that are read with float(): a fraction is fine.
NUMBERS = frozenset(
    {
        "health_deadline_s",
        "health_deadline_max_s",
        "lock_wait_s",
        "lock_lease_s",
        "artifact_max_ratio",
        "bluegreen_drain_s",
        "gpu_reboot_timeout_s",
        "rollout_wait_s",
        "models_fetch_timeout_s",
        "lb_drain_wait_s",
    }
)
# What a setting whose default is None holds when set (a string unless named here).
OPTIONAL_KINDS: dict[str, str] = {
    "gpu_memory_needed_mib": "int",
    "lb_health_port": "int",
    "lb_upstream_port": "int",
}

_OPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@dataclass(frozen=True)
class Declared:
    """One setting of group_data/all.py."""

    name: str
    default: Any
    comment: str
    kind: str  # int, number, bool, str, choice, list, tuple, dict
    optional: bool = False  # None is allowed (the default is None)
    item: str | None = None  # list / tuple: the kind of each item
    length: int | None = None  # tuple: how many items
    choices: tuple[str, ...] = ()

    @property
    def expected(self) -> str:
        """What the setting takes, in words ("an integer", "one of 'a', 'b'")."""
        words = {
            "int": "an integer",
            "number": "a number",
            "bool": "true or false",
            "str": "a string",
            "dict": "a table of names to strings",
        }
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "list":
            text = f"a list of {_plural(self.item)}"
        elif self.kind == "tuple":
            text = f"a list of {self.length} {_plural(self.item)}"
        else:
            text = words[self.kind]
        return f"{text} or nothing (None)" if self.optional else text


def _plural(kind: str | None) -> str:
    return {"int": "integers", "number": "numbers", "bool": "booleans"}.get(kind or "", "strings")


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    if isinstance(value, tuple):
        return "tuple"
    return "str"


def _item_kind(items: list[Any] | tuple[Any, ...]) -> str:
    kinds = {_kind_of(v) for v in items}
    if kinds <= {"int"} and kinds:
        return "int"
    if kinds <= {"int", "number"} and kinds:
        return "number"
    return "str"


def declare(name: str, default: Any, comment: str = "") -> Declared:
    """The Declared for setting NAME with DEFAULT: its kind from the default and the tables."""
    if name in CHOICES:
        return Declared(name, default, comment, "choice", default is None, choices=CHOICES[name])
    if default is None:
        return Declared(name, default, comment, OPTIONAL_KINDS.get(name, "str"), optional=True)
    kind = "number" if name in NUMBERS else _kind_of(default)
    if kind == "list":
        return Declared(name, default, comment, kind, item=_item_kind(default))
    if kind == "tuple":
        return Declared(name, default, comment, kind, item=_item_kind(default), length=len(default))
    return Declared(name, default, comment, kind)


def _value(node: ast.expr) -> Any:
    """The value of a constant expression (literals, and arithmetic on them: 4 * 1024**3)."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.operand))
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        pairs = zip(node.keys, node.values, strict=True)
        return {_value(k): _value(v) for k, v in pairs if k is not None}
    return ast.literal_eval(node)


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """Comment text by line, and the lines that hold nothing but a comment."""
    found: dict[int, str] = {}
    only: set[int] = set()
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            found[row] = tok.string[1:]
            if not lines[row - 1][: tok.start[1]].strip():
                only.add(row)
    return found, only


def _comment_for(node: ast.stmt, found: dict[int, str], only: set[int]) -> str:
    """The comment after the assignment (continued on indented comment lines below it), else
    the block of comment lines right above it."""
    end = node.end_lineno or node.lineno
    trailing = [found[n] for n in range(node.lineno, end + 1) if n in found and n not in only]
    if trailing:
        row = end + 1
        while row in only and found[row].startswith("  "):
            trailing.append(found[row])
            row += 1
        return " ".join(t.strip() for t in trailing)
    above: list[str] = []
    row = node.lineno - 1
    while row in only:
        above.insert(0, found[row].strip())
        row -= 1
    return " ".join(above)


def parse_schema(source: str, filename: str = "group_data/all.py") -> dict[str, Declared]:
    """Every setting assigned at the top of SOURCE (names starting with _ are pyinfra's)."""
    tree = ast.parse(source, filename)
    found, only = _comments(source)
    schema: dict[str, Declared] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name) or target.id.startswith("_"):
            continue
        try:
            default = _value(value)
        except (ValueError, TypeError, SyntaxError) as exc:
            raise ValueError(
                f"{filename} line {node.lineno}: {target.id} is not a constant ({exc})"
            ) from None
        schema[target.id] = declare(target.id, default, _comment_for(node, found, only))
    return schema


@lru_cache(maxsize=4)
def _schema_at(path: str, mtime_ns: int) -> dict[str, Declared]:
    return parse_schema(Path(path).read_text(), "group_data/all.py")


def load_schema(path: Path | None = None) -> dict[str, Declared]:
    """The schema of the project's group_data/all.py (or PATH)."""
    p = path or project_dir() / "group_data" / "all.py"
    return dict(_schema_at(str(p), p.stat().st_mtime_ns))
