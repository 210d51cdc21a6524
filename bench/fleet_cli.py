"""`ai-deploy deploy` as the fleet benchmark runs it: over every host of an inventory, from the
repository root, in a session of its own, its output kept; stopped with SIGTERM first."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.proc import CmdResult
from testkit.lbrollout import stop_group

REPO = Path(__file__).resolve().parents[1]
STRATEGY = "socket"
DEPLOY_LIMIT_S = 900.0
STEP_LINES = ("== ", "rollout stopped", "switching back", "plan:")  # shown while it runs


def deploy_argv(inventory: Path, artifact: Path, rollout: Sequence[str]) -> list[str]:
    """`ai-deploy deploy` over every host of INVENTORY, as the e2e rollout tests run it."""
    return [
        str(Path(sys.executable).with_name("ai-deploy")), "deploy", "--artifact", str(artifact),
        "-i", str(inventory), "--no-gcp", "--health-interval", "1", "--health-attempts", "20",
        "--data", f"deploy_strategy={STRATEGY}", "--data", "rollout_max_unavailable=100%",
        *rollout,
    ]  # fmt: skip


def run_cli(
    argv: list[str], log_path: Path, echo: Callable[[str], None] | None = None
) -> CmdResult:
    """ARGV from the repository root, its output kept in LOG_PATH, its step lines passed to
    ECHO as they come; after DEPLOY_LIMIT_S it is stopped (rc 124)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=REPO, env=dict(os.environ, NO_COLOR="1", TERM="dumb"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
        start_new_session=True,
    )  # fmt: skip
    result = CmdResult(list(argv), 0, started, started)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            result.lines.append((time.monotonic(), line))
            if echo and line.startswith(STEP_LINES):
                echo(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        result.rc = proc.wait(timeout=DEPLOY_LIMIT_S)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        result.rc, result.timed_out = 124, True
    except BaseException:
        stop_group(proc)
        raise
    finally:
        result.ended = time.monotonic()
        reader.join(timeout=10)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(" ".join(map(shlex.quote, argv)) + f"\n\n{result.output}")
    return result
