"""The one way this project runs shell on a host as root: `Remote`, and its pyinfra adapter.

The release gate and the strategies talk only to a `Remote`, so they can be driven by pyinfra
on a real host and, in tests, by a Remote that runs the same shell on a temporary directory."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Result:
    ok: bool
    stdout: list[str]
    stderr: list[str]


class Remote(Protocol):
    """Runs shell on the host as root and reports to the person running the deploy."""

    def run(self, script: str, *, timeout: float | None = None) -> Result: ...

    def say(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...


class PyinfraRemote:
    """A Remote over a connected pyinfra host: every command as root through sudo."""

    def __init__(self, host: Any) -> None:
        self.host = host

    @property
    def name(self) -> str:
        return str(self.host.name)

    @property
    def data(self) -> Any:
        return self.host.data

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        from pyinfra.api import StringCommand

        ok, output = self.host.run_shell_command(
            StringCommand(script), _sudo=True, _timeout=timeout or 600
        )
        return Result(ok, list(output.stdout_lines), list(output.stderr_lines))

    def say(self, message: str) -> None:
        from ai_deploy.host.event_hooks import tell

        tell(self.host, message)

    def warn(self, message: str) -> None:
        from ai_deploy.host.event_hooks import WARN, tell

        tell(self.host, message, WARN)


def tail(lines: list[str], n: int = 15) -> str:
    """The last N lines, indented, for an error message."""
    return "\n".join(f"    {line}" for line in lines[-n:])


def write_script(q: str, data: bytes, mode: str) -> str:
    """Shell writing DATA to the file Q (a path quoted for the shell, as Layout gives them; mode
    MODE, root's), atomically: a reader sees the old file or the new one, never a part."""
    blob = base64.b64encode(data).decode()
    return (
        f"printf '%s' {blob} | base64 -d > {q}.tmp && chmod {mode} {q}.tmp && "
        f"chown root:root {q}.tmp && mv -f {q}.tmp {q}"
    )
