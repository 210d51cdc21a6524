"""What every benchmark does first: refuse to run without root (it boots sandbox hosts), turn
SIGTERM into KeyboardInterrupt so its `finally` removes the hosts it started, and, for those
that run `ai-deploy deploy`, drop GCP_*/GITHUB_* from the environment (a GCP_INSTANCE would
make the deploy target one instance)."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


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
