"""One run key on every instance of a fleet, granted and taken back on all of them at once.

Each instance's ssh-keys write waits for its own zone operation (seconds each), so one at a
time the cancel of a CI job (SIGINT, SIGTERM, then SIGKILL about 10 s later) would cover only a
few instances and leave the rest: grants and removals run on a bounded pool of threads
(`MAX_WORKERS`), so a fleet of 30 takes about as long as one of 3.

The Compute calls run in the pool's threads, never in the main thread where signals land, so
a signal never cuts an accepted write off from its answer: closing first waits (bounded) for
the grants still on their way, then removes every key that may exist (see grantpool). Each
write also drops this deployment's keys of runs that are over (see runkeys), so a killed run's
leftovers go with the next run's grant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from google.auth.credentials import Credentials

from ai_deploy.gcp import compute
from ai_deploy.gcp.grantpool import granted
from ai_deploy.gcp.runkeys import LeftoverKeys, RunMark
from ai_deploy.gcp.sshkeys import KeyGrant
from ai_deploy.gcp.sshsettings import SshAccess, SshKeyError, SshSettings

logger = logging.getLogger(__name__)

# Instances granted or cleaned at once (Compute's per-project write quota is far above).
MAX_WORKERS = 16


@contextmanager
def fleet_ssh_keys(
    credentials: Credentials,
    project: str,
    targets: Sequence[tuple[str, str]],
    *,
    settings: SshSettings,
    key_pair: tuple[Path, str],
    mark: RunMark,
    environ: Mapping[str, str],
    principal: str | None = None,
    timeout: float = compute.DEFAULT_OPERATION_TIMEOUT,
    workers: int = MAX_WORKERS,
) -> Iterator[SshAccess]:
    """KEY_PAIR authorized on every (instance, zone) of TARGETS while inside (ssh-keys metadata
    on each; once for OS Login or a provided key), at most WORKERS instances at once.

    Guarantees: on entry every instance has the key (its operation DONE); an instance that is
    gone (404) or no longer RUNNING fails the whole grant with a message naming it, and no key
    is left on any. On every way out (normal end, exception, SIGINT/SIGTERM/SIGHUP as
    `Terminated`) grants still on their way are waited for (grantpool.SETTLE_TIMEOUT), then
    every key is removed at once; signals during that are held. A removal refused with 412
    conditionNotMet (another writer changed the metadata) is read again and retried with the
    fresh fingerprint (compute.METADATA_WRITE_ATTEMPTS writes), so two 412s in a row leave
    nothing and the run keeps its own outcome. A key that still cannot be removed is named:
    raised as SshKeyError after a normal end (the CI entry's ssh phase: exit 13), logged as
    an error when another error or a signal is already on its way up. Lines of
    this deployment's runs that are over (MARK's deployment, see runkeys) go in the same
    writes; nothing else is touched.
    """
    settings.validate()
    on = targets if settings.mode == "metadata" else targets[:1]
    if not on:
        raise SshKeyError("no instance to authorize the run's key on")
    leftovers = LeftoverKeys(mark, environ)
    grants = [
        KeyGrant(
            credentials,
            project,
            zone,
            name,
            settings,
            principal,
            timeout,
            key_pair,
            marks=mark,
            leftovers=leftovers,
            listed=True,
        )
        for name, zone in on
    ]
    with granted(grants, workers) as accesses:
        logger.info("the run's key is authorized on %d instance(s)", len(grants))
        yield accesses[0]


__all__ = ["MAX_WORKERS", "fleet_ssh_keys"]
