"""What happened on each host, as data: the release gate reports a `HostOutcome`, the pyinfra
run writes one JSON line per host to AI_DEPLOY_RESULT_FILE, and `ai-deploy` reads them back to
choose its exit code and its notifications. Messages stay for people and may be reworded."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

RESULT_FILE_ENV = "AI_DEPLOY_RESULT_FILE"

SERVED = "served"  # the release passed the health gate and serves
ALREADY_SERVING = "already-serving"  # nothing to change: the release was serving already
SWITCHED_BACK = "switched-back"  # not healthy; the previous release serves (and is healthy)
FAILED = "failed"  # stopped in `phase`; see `reason`
SWITCH_BACK_FAILED = "switch-back-failed"  # not healthy, and neither was the previous release
STATUSES = (SERVED, ALREADY_SERVING, SWITCHED_BACK, FAILED, SWITCH_BACK_FAILED)


class DeployFailed(Exception):
    """The change on a host stopped. `phase` says where (lock, release, venv, switch, restart,
    health, rollback); `status` is the outcome (FAILED, SWITCHED_BACK or SWITCH_BACK_FAILED);
    `serving` names the release left in service, when one is; `journal` is what revisions.log
    records (empty when the host was not changed)."""

    def __init__(
        self,
        phase: str,
        message: str,
        *,
        status: str = FAILED,
        serving: str | None = None,
        journal: str = "",
    ) -> None:
        super().__init__(message)
        self.phase = phase
        self.status = status
        self.serving = serving
        self.journal = journal  # the revisions.log detail; empty: nothing changed on the host


@dataclass(frozen=True)
class HostOutcome:
    host: str
    action: str  # deploy | rollback | restart
    release: str  # the release the run meant to put in service
    status: str  # one of STATUSES
    phase: str | None = None  # where it stopped (None when served / already serving)
    reason: str = ""
    serving: str | None = None  # the release in service afterwards, as far as the gate knows
    previous: str | None = None  # the release `current` named before the run
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in (SERVED, ALREADY_SERVING)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostOutcome:
        raw = json.loads(text)
        if raw.get("status") not in STATUSES:
            raise ValueError(f"unknown host outcome status {raw.get('status')!r}")
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__ if k in raw})


def report(outcome: HostOutcome, path: str | None = None) -> None:
    """Append OUTCOME to the result file, when the run has one (one line, one write)."""
    target = path or os.environ.get(RESULT_FILE_ENV)
    if not target:
        return
    line = (outcome.to_json() + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_outcomes(path: Path) -> dict[str, HostOutcome]:
    """The last outcome reported for each host (a host may be reported at plan and at run)."""
    found: dict[str, HostOutcome] = {}
    if not path.is_file():
        return found
    for line in path.read_text().splitlines():
        if line.strip():
            outcome = HostOutcome.from_json(line)
            found[outcome.host] = outcome
    return found
