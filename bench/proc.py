"""Running a command the benchmark started: its own process group, output lines timestamped as
they are read, a time limit after which that group (and only it) is killed by its id."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class CmdResult:
    argv: list[str]
    rc: int
    started: float  # time.monotonic
    ended: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    timed_out: bool = False

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    def tail(self, n: int = 25) -> str:
        return "".join(line for _, line in self.lines[-n:])


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        # The group this module started (setsid), by its id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_streamed(
    argv: list[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> CmdResult:
    """Run ARGV with stdout and stderr together, each line stamped with time.monotonic() when
    read and passed to ECHO; kill its process group after TIMEOUT seconds (rc 124)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(os.environ, NO_COLOR="1", TERM="dumb", **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    result = CmdResult(list(argv), 0, started, started)

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = _ANSI.sub("", raw)
            result.lines.append((time.monotonic(), line))
            if echo:
                echo(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        result.ended = time.monotonic()
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        result.ended = time.monotonic()
        result.timed_out = True
        rc = 124
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        reader.join(timeout=10)
    result.rc = rc
    return result
