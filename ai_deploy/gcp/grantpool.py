"""Run keys granted in worker threads and always taken back: the one discipline behind
`ephemeral_ssh_key` (one instance) and `fleet_ssh_keys` (a fleet).

The Compute calls of a grant run in a pool's threads, never in the main thread where signals
land, so a signal never cuts an accepted write off from its answer (the window where Compute
applies a key the caller does not know about yet). On every way out, grants still on their way
are waited for (bounded), then every grant is taken back at once, signals held meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Protocol

from ai_deploy.gcp import GcpError, cleanup_on_exit
from ai_deploy.gcp.sshsettings import SshAccess, SshKeyError

logger = logging.getLogger(__name__)

# How long closing waits for grants still on their way (their write's answer, their operation).
SETTLE_TIMEOUT = 120.0


class Grant(Protocol):
    def open(self) -> SshAccess: ...

    def take_back(self) -> str | None: ...


def report_left(failures: list[str], pending: BaseException | None) -> None:
    """Name every run key left: raised as SshKeyError after a normal end, logged as an error
    when another error (or a signal) is already on its way up."""
    if not failures:
        return
    if pending is None:
        raise SshKeyError("\n".join(failures))
    for failure in failures:
        logger.error("%s", failure)


def _take_back_all(grants: Sequence[Grant], workers: int) -> list[str]:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ai-deploy-revoke") as pool:
        return [left for left in pool.map(lambda grant: grant.take_back(), grants) if left]


@contextmanager
def granted(grants: Sequence[Grant], workers: int) -> Iterator[list[SshAccess]]:
    """Every grant opened, at most WORKERS at once, while inside; their accesses in order.

    Guarantees: on entry every grant is open, else the first error that is not a GcpError
    is raised, or one SshKeyError naming every grant that failed. On every way out (also a
    failed entry, and SIGINT/SIGTERM/SIGHUP as `Terminated`), grants not started are dropped,
    grants on their way are waited for (SETTLE_TIMEOUT at most), then all are taken back at
    once; what is left is named (see report_left)."""
    size = max(1, min(workers, len(grants)))
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="ai-deploy-grant")
    futures: list[Future[SshAccess]] = []

    def close(pending: BaseException | None) -> None:
        for future in futures:
            future.cancel()  # not started: nothing was sent for it
        _, late = wait(futures, timeout=SETTLE_TIMEOUT)
        if late:
            logger.warning(
                "%d key grant(s) did not end within %.0fs; removing anyway",
                len(late),
                SETTLE_TIMEOUT,
            )
        pool.shutdown(wait=False)
        report_left(_take_back_all(grants, size), pending)

    with cleanup_on_exit(close):
        futures.extend(pool.submit(grant.open) for grant in grants)
        wait(futures)
        errors = [exc for f in futures if (exc := f.exception()) is not None]
        unexpected = [exc for exc in errors if not isinstance(exc, GcpError)]
        if unexpected:
            raise unexpected[0]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise SshKeyError("\n".join(str(exc) for exc in errors))
        yield [f.result() for f in futures]


__all__ = ["SETTLE_TIMEOUT", "Grant", "granted", "report_left"]
