"""deploy.py run by pyinfra from the CI entry: output streamed live, each host's outcome read
back as data from the run's result file."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.ci import output as ci_output
from ai_deploy.host.outcome import RESULT_FILE_ENV, HostOutcome, read_outcomes
from ai_deploy.inventory import pyinfra_command
from ai_deploy.project import project_dir

STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class PyinfraRun:
    returncode: int
    tail: list[str]  # the last lines of its output
    outcomes: dict[str, HostOutcome]  # by host name, as the hosts reported them


def run_pyinfra_streamed(
    inventory: str, data: Sequence[str], env: Mapping[str, str], *, dry: bool = False
) -> PyinfraRun:
    """Run deploy.py on INVENTORY with its output streamed live.

    An exception here (SIGTERM or SIGINT raised as one) stops pyinfra first, with SIGINT so
    it finishes the command in flight, then SIGTERM, so the cleanup that follows does not race
    a deploy still running."""
    tail: deque[str] = deque(maxlen=60)
    with tempfile.TemporaryDirectory(prefix="ai-deploy-result-") as tmp:
        result_file = Path(tmp) / "outcomes.jsonl"
        proc = subprocess.Popen(
            pyinfra_command(inventory, data, dry=dry),
            cwd=project_dir(),
            env={**env, RESULT_FILE_ENV: str(result_file)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        try:
            assert proc.stdout is not None
            with ci_output.commands_stopped():
                for line in proc.stdout:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    tail.append(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        return PyinfraRun(rc, list(tail), read_outcomes(result_file))


def _stop(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_GRACE_S / 2)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()
