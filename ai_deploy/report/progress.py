"""The default view of a pyinfra run started by `ai-deploy`: each host's events
(ai_deploy.host.events) as `[HOST] ...` lines, short enough to read in a CI log. What changed is
one line per task of consecutive changes; the gate's progress, warnings and errors are printed
as said. `-v` (or AI_DEPLOY_VERBOSE) shows pyinfra's own stream instead."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ai_deploy.host.events import CHANGED, ERROR, WARN, HostEvent
from ai_deploy.report.secretlike import LineRedactor

_NAMED_CHANGES = 3  # a task with more changed operations than this is said as a count


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class HostProgress:
    """Prints host events as they come; every line is redacted first (key- and token-like
    values, registered secrets: ai_deploy.report.secretlike).

    + errors: how many ERROR events were printed (a failure that needs no more explaining)"""

    def __init__(self, emit: Callable[[str], None] = _print) -> None:
        self._emit = emit
        self._redact = LineRedactor()
        self._changes: tuple[str, str, list[str]] | None = None  # host, task, operations
        self.errors = 0

    def feed(self, event: HostEvent) -> None:
        if event.kind == CHANGED:
            if self._changes and self._changes[:2] == (event.host, event.group):
                self._changes[2].append(event.text)
                return
            self.flush()
            self._changes = (event.host, event.group, [event.text])
            return
        self.flush()
        lines = event.text.splitlines() or [""]
        if event.kind == WARN:
            lines[0] = f"warning: {lines[0]}"
        elif event.kind == ERROR:
            lines[0] = f"error: {lines[0]}"
            self.errors += 1
        for line in lines:
            self._line(event.host, line)

    def flush(self) -> None:
        """Print the changes held back (they are grouped until another event comes)."""
        if self._changes is None:
            return
        host, task, ops = self._changes
        self._changes = None
        what = "; ".join(ops) if len(ops) <= _NAMED_CHANGES else f"{len(ops)} operations"
        self._line(host, f"changed: {task}: {what}" if task else f"changed: {what}")

    def _line(self, host: str, text: str) -> None:
        self._emit(self._redact(f"[{host}] {text}"))
