"""GCP side of a deploy: credentials, the temporary firewall window, the ephemeral SSH key.

Also home to what these cleanups share: `Terminated`, raised in the main thread when SIGINT,
SIGTERM or SIGHUP arrives inside `raise_on_termination()`, and `deferred_termination()`, which
holds those signals back while a cleanup runs so a second Ctrl-C or a cancelled CI job cannot
cut it short. `cleanup_on_exit()` puts the two together around a resource's whole life.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)

# SIGHUP too: a closed terminal or SSH session must clean up like Ctrl-C.
TERMINATION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class GcpError(Exception):
    """Base class of the errors this package raises; the message says what to check."""


class Terminated(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived while a GCP resource (or a pyinfra run) was held open.

    A BaseException (like KeyboardInterrupt) so that `except Exception` blocks on the way up
    do not swallow it; context managers still run their cleanup.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell convention for death by this signal: 128 + signal number."""
        return 128 + self.signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def raise_on_termination() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP raise `Terminated` in the main thread.

    Guarantees the previous handlers are back in place on exit, whatever happened. Outside
    the main thread Python cannot install handlers; the block then runs unchanged.
    """
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {sig: signal.getsignal(sig) for sig in TERMINATION_SIGNALS}
    try:
        for sig in TERMINATION_SIGNALS:
            signal.signal(sig, handler)
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def deferred_termination(*, redeliver: bool = True) -> Iterator[list[int]]:
    """Hold SIGINT, SIGTERM and SIGHUP back while inside (for cleanup that must finish).

    Yields the list of signals received so far. On exit the previous handlers are restored
    and, when REDELIVER is true, each held signal is raised again so the surrounding code
    reacts as if it had arrived just now. Pass `redeliver=False` when the block is already
    cleaning up after a `Terminated`, so a second signal does not replace the first.
    """
    received: list[int] = []
    if not _in_main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.warning(
            "%s received during cleanup; finishing the cleanup first",
            signal.Signals(signum).name,
        )
        received.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in TERMINATION_SIGNALS}
    try:
        for sig in TERMINATION_SIGNALS:
            signal.signal(sig, handler)
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if redeliver:
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


@contextmanager
def cleanup_on_exit(close: Callable[[BaseException | None], None]) -> Iterator[None]:
    """Run CLOSE on every way out of the block: CLOSE(None) after a normal end, CLOSE(exc)
    when it raised EXC (a `Terminated` for SIGINT/SIGTERM/SIGHUP), then EXC propagates.

    Guarantees: signals inside the block raise `Terminated` in the main thread; signals
    arriving while CLOSE runs are held until it is done, then delivered again (after a normal
    end or an ordinary exception) or dropped (when CLOSE is already cleaning up after a
    signal, so a second one does not replace the first). CLOSE must not raise over a pending
    EXC; after a normal end its exception propagates.
    """
    with raise_on_termination():
        try:
            yield
        except BaseException as exc:
            with deferred_termination(redeliver=not isinstance(exc, Terminated)):
                close(exc)
            raise
        else:
            with deferred_termination():
                close(None)


__all__ = [
    "TERMINATION_SIGNALS",
    "GcpError",
    "Terminated",
    "cleanup_on_exit",
    "deferred_termination",
    "raise_on_termination",
]
