"""A command on a connected pyinfra host whose output is handed over line by line as it comes
(a followed log, a long `exec`), where pyinfra's own runner returns it only at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ai_deploy.host.remote import PyinfraRemote

Line = Callable[[str], None]

# Run SCRIPT in the background and stop it once our stdin closes: when the connection goes
# (Ctrl-C, a closed pipe, a killed deployer) nothing is left running on the host.
_HELD = "( {script} ) & child=$!; cat >/dev/null; kill $child 2>/dev/null; wait $child"


def _lines(buffer: Iterable[Any], on_line: Line) -> None:
    for raw in buffer:
        line = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        on_line(line.rstrip("\r\n"))


def stream(
    remote: PyinfraRemote,
    script: str,
    on_stdout: Line,
    on_stderr: Line,
    *,
    until_closed: bool = False,
) -> int:
    """Run SCRIPT as root on REMOTE's host, calling ON_STDOUT / ON_STDERR for each line as it
    arrives; returns its exit status. UNTIL_CLOSED: SCRIPT runs until this side closes the
    connection (for a command that never ends by itself, such as `tail -F`)."""
    import gevent
    from pyinfra.api import StringCommand
    from pyinfra.connectors.util import make_unix_command_for_host

    host = remote.host
    client = getattr(host.connector, "client", None)
    if client is None:  # a connector without a live SSH client: the output comes at the end
        ok, output = host.run_shell_command(StringCommand(script), _sudo=True)
        for line in output.stdout_lines:
            on_stdout(line)
        for line in output.stderr_lines:
            on_stderr(line)
        return 0 if ok else 1
    body = _HELD.format(script=script) if until_closed else script
    command = make_unix_command_for_host(host.state, host, StringCommand(body), _sudo=True)
    stdin, stdout, stderr = client.exec_command(command.get_raw_value())
    try:
        if not until_closed:
            stdin.close()
        readers = [gevent.spawn(_lines, stdout, on_stdout), gevent.spawn(_lines, stderr, on_stderr)]
        gevent.joinall(readers, raise_error=True)
        return int(stdout.channel.recv_exit_status())
    finally:
        stdout.channel.close()
