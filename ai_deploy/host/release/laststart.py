"""The last start that passed the gate, remembered on the host: `Layout.last_start`
(<app_root>/last-start.json, root's, 0644, replaced atomically), so a plan can estimate the next
one. Its keys:

- `release`: the release that started;
- `strategy`: how it went live (socket, restart, bluegreen);
- `outage_s`: seconds from stopping the old process to the new one passing readiness (the
  one-copy strategies), null when the old release served throughout (blue/green);
- `start_s`: seconds from that stop (one copy) or from the new process's start (blue/green) to
  passing readiness;
- `at`: when it passed, in epoch seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ai_deploy.host.remote import Remote, write_script
from ai_deploy.host.settings import Spec


@dataclass(frozen=True)
class Start:
    """How long one start took: OUTAGE_S is None when nothing stopped serving for it."""

    release: str
    strategy: str
    outage_s: float | None
    start_s: float

    def line(self) -> str:
        """The gate's line: `outage 12.3 s ...` (one copy) or `start 8.1 s ..., no outage`."""
        if self.outage_s is None:
            return f"start {self.start_s:.1f} s: release {self.release} ready, no outage"
        return (
            f"outage {self.outage_s:.1f} s: from stopping the old process to release "
            f"{self.release} passing readiness"
        )

    def record(self, at: float) -> dict[str, object]:
        return {
            "release": self.release,
            "strategy": self.strategy,
            "outage_s": None if self.outage_s is None else round(self.outage_s, 3),
            "start_s": round(self.start_s, 3),
            "at": round(at, 3),
        }


def record_last_start(remote: Remote, spec: Spec, start: Start, at: float | None = None) -> None:
    """Replace the host's last-start.json with START (passed at AT, now when None). A write that
    fails only costs the next plan its estimate: it is said, never raised."""
    data = json.dumps(start.record(time.time() if at is None else at), sort_keys=True).encode()
    done = remote.run(write_script(spec.layout.last_start, data + b"\n", "0644"))
    if not done.ok:
        remote.warn(f"could not record the start in {spec.layout.last_start}")
