"""What every benchmark does first: refuse to run without root (it boots sandbox hosts), turn
SIGTERM into KeyboardInterrupt so its `finally` removes the hosts it started, and, for those
that run `ai-deploy deploy`, drop GCP_*/GITHUB_* from the environment (a GCP_INSTANCE would
make the deploy target one instance); and what each does around its measurements: the run's
header for the report, and the body run so that an interrupt or an error ends it with a note."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType

from ai_deploy.sandbox import hosts


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start(what: str, *, drop_ci_env: bool = False) -> bool:
    """False (said on stderr) when not root; else the SIGTERM handler is installed."""
    if os.geteuid() != 0:
        print(f"the benchmark boots {what}: run it as root", file=sys.stderr)
        return False
    signal.signal(signal.SIGTERM, _on_term)
    if drop_ci_env:
        for key in [k for k in os.environ if k.startswith(("GCP_", "GITHUB_"))]:
            del os.environ[key]
    return True


@dataclass(frozen=True)
class RunHeader:
    """What a benchmark's report says of its run: the command, when, and how busy the machine
    was at the start (load average, other sandbox hosts running)."""

    command: str
    date: str
    load_avg: str
    others: list[str]


def header(prog: str, raw: Sequence[str]) -> RunHeader:
    """The run's header, for PROG called with the arguments RAW."""

    return RunHeader(
        command=" ".join([prog, *map(shlex.quote, raw)]),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        load_avg=", ".join(f"{v:.2f}" for v in os.getloadavg()),
        others=[h.name for h in hosts.list_hosts() if h.running],
    )


def guarded(body: Callable[[], None], notes: list[str], log: Callable[[str], None]) -> int:
    """BODY run; its exit code: 0, 130 when interrupted, 1 on an error (said in NOTES, and
    with its traceback through LOG). The caller's `finally` removes what it started."""
    try:
        body()
    except KeyboardInterrupt:
        notes.append("the run was interrupted; the table holds what was measured")
        return 130
    except Exception as exc:
        log(f"the run stopped on an error: {exc!r}\n{traceback.format_exc()}")
        notes.append(f"the run stopped on an error: {exc!r}")
        return 1
    return 0


def remove_hosts(started: list[str], log: Callable[[str], None]) -> None:
    """Remove the sandbox hosts named in STARTED, one by one, each dropped from the list once
    gone; one already removed from outside is said and skipped."""
    from ai_deploy.sandbox.image import SandboxError

    for name in list(started):
        try:
            hosts.down([name])
            log(f"removed host {name}")
        except SandboxError as exc:  # removed from outside already
            log(f"host {name}: {exc}")
        started.remove(name)


def run_guarded(
    body: Callable[[], None], down: Callable[[], None], log: Callable[[str], None]
) -> tuple[int, list[str]]:
    """BODY run (`guarded`), then DOWN on every exit; returns the run's exit code and the
    report's notes on it."""
    notes: list[str] = []
    try:
        return guarded(body, notes, log), notes
    finally:
        down()


def machine_now() -> tuple[str, str, list[str]]:
    """(date, load average, the sandbox hosts running) at a run's start, for its report."""
    head = header("", [])
    return head.date, head.load_avg, head.others
