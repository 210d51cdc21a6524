"""What every benchmark does first: refuse to run without root (it boots sandbox hosts), turn
SIGTERM into KeyboardInterrupt so its `finally` removes the hosts it started, and, for those
that run `ai-deploy deploy`, drop GCP_*/GITHUB_* from the environment (a GCP_INSTANCE would
make the deploy target one instance)."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
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


def run_guarded(
    body: Callable[[], None], down: Callable[[], None], log: Callable[[str], None]
) -> tuple[int, list[str]]:
    """BODY run, then DOWN on every exit (an interrupt and an error included); returns the
    run's exit code (0, 130 interrupted, 1 an error, logged) and the report's notes on it."""
    try:
        body()
    except KeyboardInterrupt:
        return 130, ["the run was interrupted; the tables hold what was measured"]
    except Exception as exc:
        log(f"the run stopped on an error: {exc!r}\n{traceback.format_exc()}")
        return 1, [f"the run stopped on an error: {exc!r}"]
    finally:
        down()
    return 0, []


def machine_now() -> tuple[str, str, list[str]]:
    """(date, load average, the sandbox hosts running) at a run's start, for its report."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return date, load, [h.name for h in hosts.list_hosts() if h.running]
