"""Readiness beyond "healthy", and how long a start may take.

- The `ready` probe (ready_path, ready_method, ready_body, ready_status): one request, sent from
  the host itself after health_path answered 200, that must answer ready_status before a
  release is live (e.g. `POST /v1/completions` for one token: the server can serve).
- Progress: an app may add `{"loading": {"done": D, "total": T}}` (and a `phase` word) to what
  its health path answers while it starts. Each step forward gives the start another
  health_deadline_s, up to health_deadline_max_s from the start; a start that stops moving
  fails health_deadline_s after its last step (`Deadline`).

The numbers and the phase word are checked here before they reach any message: the app's own
text never does."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec

_PHASE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
READY_TIMEOUT_S = 30  # one request for one token; a server that can serve answers well within

# Pasted after the health probe's HTTP call (health.PROBE): the progress field, if any, of the
# JSON body it read, as one line the deployer parses.
LOADING_LINES = """
try:
    loading = json.loads(raw).get("loading") or dict()
    phase = str(loading.get("phase", "-"))
    phase = phase if re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", phase) else "-"
    print("LOADING", int(loading["done"]), int(loading["total"]), phase)
except Exception:
    pass
"""

READY_PROBE = """
python3 - <<'EOF'
import urllib.request, urllib.error
body = {body}
request = urllib.request.Request({url}, data=body, method={method})
if body is not None:
    request.add_header("Content-Type", "application/json")
try:
    with urllib.request.urlopen(request, timeout={timeout}) as r:
        print("READY", r.status)
except urllib.error.HTTPError as e:
    print("READY", e.code)
except Exception as e:
    print("READY 0", type(e).__name__)
EOF
"""


@dataclass(frozen=True)
class Progress:
    """A start's progress as its health path reported it."""

    done: int
    total: int
    phase: str = ""

    def text(self) -> str:
        return f"loading {self.done}/{self.total}" + (f" ({self.phase})" if self.phase else "")


def parse_loading(lines: list[str]) -> Progress | None:
    """The progress in the health probe's output (a `LOADING D T PHASE` line), or None."""
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "LOADING":
            try:
                done, total = int(parts[1]), int(parts[2])
            except ValueError:
                return None
            if not 0 <= done <= total or total == 0:
                return None
            phase = parts[3] if _PHASE.fullmatch(parts[3]) and parts[3] != "-" else ""
            return Progress(done, total, phase)
    return None


@dataclass
class Deadline:
    """When a start has had its time: DEADLINE_S after it began or after its last step of
    progress, and never later than MAX_S after it began (at least DEADLINE_S)."""

    started: float
    deadline_s: float
    max_s: float
    last: Progress | None = None
    moved: float = field(init=False)

    def __post_init__(self) -> None:
        self.moved = self.started

    def saw(self, progress: Progress | None, now: float) -> None:
        if progress is not None and progress != self.last:
            self.last, self.moved = progress, now

    def expired(self, now: float) -> str | None:
        """None while the start has time left, else why it has none (with the last progress)."""
        last = f"; last progress {self.last.text()}" if self.last else ""
        if now - self.started >= max(self.deadline_s, self.max_s):
            return f"within health_deadline_max_s={max(self.deadline_s, self.max_s):.0f} s{last}"
        if now - self.moved >= self.deadline_s:
            if self.last is None:
                return f"within health_deadline_s={self.deadline_s:.0f} s"
            return (
                f"within health_deadline_s={self.deadline_s:.0f} s of its last progress"
                f" ({now - self.started:.0f} s after the start){last}"
            )
        return None

    @property
    def ends(self) -> float:
        """When the start's time is up unless it makes progress (for the gate's notes)."""
        return min(self.moved + self.deadline_s, self.started + max(self.deadline_s, self.max_s))


def ready_script(spec: Spec, port: int) -> str:
    """The ready probe for the app on local PORT: every value a Python literal, never code."""
    assert spec.ready_path is not None
    url = json.dumps(f"http://127.0.0.1:{int(port)}{spec.ready_path}")
    body = "None" if spec.ready_body is None else repr(spec.ready_body.encode())
    return READY_PROBE.format(
        url=url, body=body, method=json.dumps(spec.ready_method), timeout=READY_TIMEOUT_S
    )


def probe_ready(remote: Remote, spec: Spec, port: int) -> int:
    """The status the ready probe got on local PORT (0: no answer)."""
    for line in remote.run(ready_script(spec, port)).stdout:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "READY" and parts[1].isdigit():
            return int(parts[1])
    return 0


def ready_name(spec: Spec, port: int) -> str:
    """The ready probe in words: `POST http://127.0.0.1:8000/v1/completions`."""
    return f"{spec.ready_method} http://127.0.0.1:{port}{spec.ready_path or ''}"
