"""The pyinfra side of ai_deploy.host.events: `tell` (a host's message logged by pyinfra and
sent as an event) and the state callback that sends what each operation changed."""

from __future__ import annotations

import os
from typing import Any

from pyinfra import logger
from pyinfra.api.state import BaseStateCallback

from ai_deploy.host.events import CHANGED, ERROR, EVENTS_FD_ENV, SAY, WARN, HostEvent, send

_explained: set[str] = set()  # hosts whose failure an ERROR event has said already
_LOG = {SAY: logger.info, WARN: logger.warning, ERROR: logger.error}


def tell(host: Any, text: str, kind: str = SAY) -> None:
    """TEXT about HOST (a pyinfra Host) to the person watching: logged by pyinfra (each line
    under the host's prefix, errors in red) and sent as one event."""
    log = _LOG[kind]
    for line in text.splitlines() or [""]:
        if kind == ERROR:
            host.log_styled(line, fg="red", log_func=log)
        else:
            log(f"{host.print_prefix}{line}")
    if kind == ERROR:
        _explained.add(str(host.name))
    send(HostEvent(str(host.name), kind, text))


def _op_names(state: Any, op_hash: str) -> tuple[str, str]:
    """(task, operation) of OP_HASH: pyinfra names an operation inside a @deploy
    "TASK | OPERATION"; one outside any has no task."""
    names = sorted(state.get_op_meta(op_hash).names) or ["an operation"]
    group, _, name = names[0].rpartition(" | ")
    return group, name


class ChangeEvents(BaseStateCallback):
    """Sends a CHANGED event for each operation that changed a host, and an ERROR event (its
    name and the last lines of its output) for one that failed with nothing said about it.

    pyinfra records an operation's result just after its success or error callback, so each
    host's last operation is looked at when that host starts its next one, and at disconnect."""

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}  # host name -> its last operation, not looked at

    def operation_host_start(self, state: Any, host: Any, op_hash: str) -> None:  # type: ignore[override]
        self._settle(state, host)

    def operation_host_success(  # type: ignore[override]
        self, state: Any, host: Any, op_hash: str, retry_count: int = 0
    ) -> None:
        self._pending[host.name] = op_hash

    def operation_host_error(  # type: ignore[override]
        self, state: Any, host: Any, op_hash: str, retry_count: int = 0, max_retries: int = 0
    ) -> None:
        self._pending[host.name] = op_hash

    def host_connect_error(self, state: Any, host: Any, error: Any) -> None:  # type: ignore[override]
        send(HostEvent(str(host.name), ERROR, f"could not connect: {error}"))

    def host_disconnect(self, state: Any, host: Any) -> None:  # type: ignore[override]
        self._settle(state, host)

    def _settle(self, state: Any, host: Any) -> None:
        op_hash = self._pending.pop(host.name, None)
        if op_hash is None:
            return
        meta = state.get_op_data_for_host(host, op_hash).operation_meta
        if not meta.is_complete():
            return
        group, name = _op_names(state, op_hash)
        if meta.did_change():
            send(HostEvent(str(host.name), CHANGED, name, group))
        elif meta.did_error() and host.name not in _explained:
            lines = meta.stderr_lines or meta.stdout_lines
            tail = [f"    {line}" for line in lines[-15:]]
            send(HostEvent(str(host.name), ERROR, "\n".join([f"{name}: failed", *tail])))


def send_events(state: Any) -> None:
    """Have STATE's run send each host's changes (ChangeEvents), once per run, when `ai-deploy`
    listens; a plain pyinfra run is left as it is."""
    if not os.environ.get(EVENTS_FD_ENV):
        return
    if any(isinstance(h, ChangeEvents) for h in state.callback_handlers):
        return
    state.add_callback_handler(ChangeEvents())
