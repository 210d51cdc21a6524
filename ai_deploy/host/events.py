"""What a pyinfra run tells the person watching, as data: each host's messages (the gate's
progress, warnings, failures) and each operation that changed it, one JSON line per event on
the file descriptor AI_DEPLOY_EVENTS_FD names, sent as they happen.

`ai-deploy` opens that descriptor for the runs it starts and prints these events in place of
pyinfra's own stream (which comes back with `-v`); a plain `pyinfra` run has no descriptor and
shows its usual stream. ai_deploy.host.event_hooks sends them from inside the run, and logs
each through pyinfra's logger too, so both views say the same thing."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

EVENTS_FD_ENV = "AI_DEPLOY_EVENTS_FD"

SAY = "say"  # progress for people: the plan, a venv built, health answered
WARN = "warn"  # something to look at; the run goes on
ERROR = "error"  # why this host failed (its text may hold several lines)
CHANGED = "changed"  # an operation changed the host: `group` and `text` name it
KINDS = (SAY, WARN, ERROR, CHANGED)


@dataclass(frozen=True)
class HostEvent:
    host: str
    kind: str  # one of KINDS
    text: str
    group: str = ""  # CHANGED: the task (pyinfra @deploy) the operation belongs to

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostEvent:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
            raise ValueError(f"not a host event: {text[:80]!r}")
        return cls(
            host=str(raw.get("host", "")),
            kind=str(raw["kind"]),
            text=str(raw.get("text", "")),
            group=str(raw.get("group", "")),
        )


def send(event: HostEvent) -> None:
    """EVENT as one line on AI_DEPLOY_EVENTS_FD, when the run has one; a reader that went away
    (ai-deploy stopped) or a bad descriptor never stops the deploy."""
    fd_text = os.environ.get(EVENTS_FD_ENV, "").strip()
    if not fd_text.isdigit():
        return
    data = (event.to_json() + "\n").encode()
    try:
        while data:
            data = data[os.write(int(fd_text), data) :]
    except OSError:
        return
