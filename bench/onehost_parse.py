"""Where the seconds of one single-host deploy go, read back from what the tool printed: the
phase durations of its closing `phases:` line, and the time each streamed line was read (pyinfra's
own stream, which `ai-deploy deploy -v` passes through and a plain pyinfra run prints). Pure.

The parts, in the order they happen (a part whose marks are missing is None, never a guess):
- wrapper start: process start to its first phase heading (`==> ` or `::group::`); for a plain
  pyinfra run, to pyinfra's `--> Loading config`
- artifact: the tool's `artifact` phase (the artifact and the settings checked)
- access: every other phase before the deploy (ssh, host-keys, instance, config, ...)
- pyinfra start: the last phase heading before `--> Loading config` to that line (pyinfra's
  process start and its imports)
- connect and facts: `--> Loading config` to `--> Beginning operation run` (inventory,
  connecting, deploy.py loaded and the facts it asks for)
- host ops: from there to the start of the upload operation (the idempotent set-up
  operations), or of the release operation when there is no upload
- upload: the `Upload artifact` operation, to the next operation's start; 0 when the deploy
  has no upload operation (a no-op: the host has the artifact)
- gate: the release operation (`... serves and is healthy`: extract, venv, switch, the health
  gate on the host with the model's start) to `--> Results:`
- pyinfra end: `--> Results:` to the next phase heading (pyinfra's table, disconnect, exit);
  for a plain pyinfra run, to the process's end
- outside check: the tool's `health` phase
- exit: the tool's last line (its closing headline) to the process's end
- other: the wall time less every part measured (the closing lines, notifications, gaps)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PARTS = (
    "wrapper start",
    "artifact",
    "access",
    "pyinfra start",
    "connect and facts",
    "host ops",
    "upload",
    "gate",
    "pyinfra end",
    "outside check",
    "exit",
    "other",
)
NOT_ACCESS = ("artifact", "deploy", "health", "rollback")  # the phases that are not access

_HEADING = re.compile(r"^(==> |::group::)")
_LOADING = re.compile(r"--> Loading config")
_BEGIN = re.compile(r"--> Beginning operation run")
_OPERATION = re.compile(r"--> Starting operation: ")
_UPLOAD = re.compile(r"--> Starting operation: .*Upload artifact")
_GATE = re.compile(r"--> Starting operation: .*serves and is healthy")
_RESULTS = re.compile(r"--> Results:")
_PHASES = re.compile(r"^phases: (.+)$")
_PHASE = re.compile(r"^([\w.-]+) (?:(\d+) min )?([\d.]+) s(?: \(failed\))?$")

Lines = Sequence[tuple[float, str]]


def parse_phases(output: str) -> dict[str, float]:
    """The phase durations (seconds) of the last `phases: NAME 1.2 s, ...` line in OUTPUT
    (`N min M s` for a long one); {} when there is none."""
    found: dict[str, float] = {}
    for line in output.splitlines():
        match = _PHASES.match(line.strip())
        if not match:
            continue
        found = {}
        for item in match.group(1).split(", "):
            part = _PHASE.match(item.strip())
            if part:
                name, minutes, seconds = part.groups()
                found[name] = found.get(name, 0.0) + int(minutes or 0) * 60 + float(seconds)
    return found


def _find(lines: Lines, pattern: re.Pattern[str], start: int = 0) -> int | None:
    for i in range(start, len(lines)):
        if pattern.search(lines[i][1]):
            return i
    return None


def _span(lines: Lines, a: int | None, b: int | None) -> float | None:
    if a is None or b is None or b < a:
        return None
    return lines[b][0] - lines[a][0]


@dataclass(frozen=True)
class _Marks:
    loading: int | None
    begin: int | None
    upload: int | None
    after_upload: int | None
    gate: int | None
    results: int | None


def _marks(lines: Lines) -> _Marks:
    loading = _find(lines, _LOADING)
    begin = _find(lines, _BEGIN, loading or 0) if loading is not None else None
    upload = _find(lines, _UPLOAD, begin) if begin is not None else None
    after = _find(lines, _OPERATION, upload + 1) if upload is not None else None
    gate = _find(lines, _GATE, begin) if begin is not None else None
    results = _find(lines, _RESULTS, gate) if gate is not None else None
    return _Marks(loading, begin, upload, after, gate, results)


def _pyinfra_parts(lines: Lines, m: _Marks) -> dict[str, float | None]:
    no_upload = m.upload is None and m.gate is not None
    return {
        "connect and facts": _span(lines, m.loading, m.begin),
        "host ops": _span(lines, m.begin, m.gate if no_upload else m.upload),
        "upload": 0.0 if no_upload else _span(lines, m.upload, m.after_upload),
        "gate": _span(lines, m.gate, m.results),
    }


def _with_other(parts: dict[str, float | None], wall: float) -> dict[str, float | None]:
    known = sum(v for v in parts.values() if v is not None)
    parts["other"] = max(0.0, wall - known)
    return {name: parts.get(name) for name in PARTS}


def tool_breakdown(
    lines: Lines, started: float, ended: float, phases: Mapping[str, float]
) -> dict[str, float | None]:
    """The parts of an `ai-deploy deploy -v` run: LINES as (time read, text), STARTED and ENDED
    the process's start and end on the same clock, PHASES its closing line's durations."""
    m = _marks(lines)
    first = _find(lines, _HEADING)
    deploy_head = None
    if m.loading is not None:
        heads = [i for i in range(m.loading) if _HEADING.search(lines[i][1])]
        deploy_head = heads[-1] if heads else None
    after_results = _find(lines, _HEADING, m.results) if m.results is not None else None
    access = [s for name, s in phases.items() if name not in NOT_ACCESS]
    parts: dict[str, float | None] = {
        "wrapper start": None if first is None else lines[first][0] - started,
        "artifact": phases.get("artifact"),
        "access": sum(access) if access else None,
        "pyinfra start": _span(lines, deploy_head, m.loading),
        **_pyinfra_parts(lines, m),
        "pyinfra end": _span(lines, m.results, after_results),
        "outside check": phases.get("health"),
        "exit": ended - lines[-1][0] if lines else None,
    }
    return _with_other(parts, ended - started)


def pyinfra_breakdown(lines: Lines, started: float, ended: float) -> dict[str, float | None]:
    """The parts of a plain `pyinfra INVENTORY deploy.py` run (no wrapper phases: its wrapper
    start is pyinfra's own, to `--> Loading config`)."""
    m = _marks(lines)
    parts: dict[str, float | None] = {
        "wrapper start": None if m.loading is None else lines[m.loading][0] - started,
        "artifact": None,
        "access": None,
        "pyinfra start": None,
        **_pyinfra_parts(lines, m),
        "pyinfra end": None if m.results is None else ended - lines[m.results][0],
        "outside check": None,
        "exit": None,
    }
    return _with_other(parts, ended - started)
