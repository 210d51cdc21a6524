"""Output lines of several hosts told apart: `HOST | line`, host names padded to one width, each
line made safe for the terminal first (ai_deploy.host.safetext); and a Remote whose messages are
printed that way (for commands that run host steps themselves)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.host.safetext import safe_line


class HostLines:
    """Prints `HOST | line` (or the bare line when PREFIX is false) to stdout or stderr."""

    def __init__(self, names: Iterable[str], *, prefix: bool = True) -> None:
        self.width = max((len(n) for n in names), default=0)
        self.prefix = prefix

    def format(self, host: str, line: str) -> str:
        line = safe_line(line)
        return f"{host:<{self.width}} | {line}" if self.prefix else line

    def out(self, host: str, line: str, *, stream: TextIO | None = None) -> None:
        print(self.format(host, line), file=stream or sys.stdout, flush=True)

    def err(self, host: str, line: str) -> None:
        self.out(host, line, stream=sys.stderr)


class PrintedRemote(PyinfraRemote):
    """A host's messages (the gate's, the lock's) printed as `HOST | message`: no pyinfra run
    prints them for a command. PROGRESS false: only warnings are printed."""

    def __init__(self, host: object, out: HostLines, *, progress: bool = True) -> None:
        super().__init__(host)
        self.out = out
        self.progress = progress

    def say(self, message: str) -> None:
        if not self.progress:
            return
        for line in message.splitlines():
            self.out.out(self.name, line)

    def warn(self, message: str) -> None:
        for line in message.splitlines():
            self.out.err(self.name, line)
