"""Run keys recognised again: which `ssh-keys` lines a deploy wrote, for which deployment and
which run, and which of them are left by runs that are over (so the next run removes them, as
rules are swept).

Each run key's `google-ssh` JSON carries, besides gcloud's `userName` and `expireOn`, two marks
(the guest agent reads only the first two and ignores the rest):

- `aiDeployOf`: the deployment (the app's name), so one app's runs never touch another's keys
  on a VM they share;
- `aiDeployRun`: the run, `RUNID-ATTEMPT` in GitHub Actions, `local-HOST-PID` elsewhere.

A marked line of this deployment is a leftover when its run is not this one and it expired,
or its run is an earlier attempt of this GitHub run, or GitHub says its run is completed, or it
is a local run of this machine whose process is gone. Lines without the marks of this
deployment (a user's own keys, another deployment's) are never leftovers here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ai_deploy.gcp.github_runs import RunStatus
from ai_deploy.gcp.keypair import entry_expiry, entry_stamp

DEPLOYMENT_FIELD = "aiDeployOf"
RUN_FIELD = "aiDeployRun"
_LOCAL = "local-"


@dataclass(frozen=True)
class RunMark:
    """This run's marks: the deployment it belongs to and the run itself."""

    deployment: str
    run: str

    @classmethod
    def current(cls, deployment: str, environ: Mapping[str, str]) -> RunMark:
        """The marks of the running process: its GitHub run and attempt, else this machine
        and process id."""
        run_id = environ.get("GITHUB_RUN_ID", "").strip()
        if run_id:
            attempt = environ.get("GITHUB_RUN_ATTEMPT", "").strip() or "1"
            return cls(deployment, f"{run_id}-{attempt}")
        return cls(deployment, f"{_LOCAL}{socket.gethostname()}-{os.getpid()}")

    def fields(self) -> dict[str, str]:
        """The JSON fields that carry the marks in a `google-ssh` line."""
        return {DEPLOYMENT_FIELD: self.deployment, RUN_FIELD: self.run}


def line_marks(line: str) -> RunMark | None:
    """The marks of an `ssh-keys` line, or None for a line without both."""
    stamp = entry_stamp(line)
    deployment, run = stamp.get(DEPLOYMENT_FIELD), stamp.get(RUN_FIELD)
    if not isinstance(deployment, str) or not isinstance(run, str) or not deployment or not run:
        return None
    return RunMark(deployment, run)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by someone else
        return False
    return False


class LeftoverKeys:
    """Decides, line by line, whether a line is a run key of MINE's deployment left by a run
    that is over (GitHub is asked about each other run at most once)."""

    def __init__(self, mine: RunMark, environ: Mapping[str, str]) -> None:
        self.mine = mine
        self._runs = RunStatus(environ)
        self._host = socket.gethostname()

    def why(self, line: str, now: datetime) -> str | None:
        """Why LINE is a leftover to remove now, or None to keep it."""
        marks = line_marks(line)
        if marks is None or marks.deployment != self.mine.deployment:
            return None
        if marks.run == self.mine.run:
            return None
        expiry = entry_expiry(line)
        if expiry is not None and expiry <= now:
            return f"it expired at {expiry:%Y-%m-%dT%H:%M:%SZ}"
        return self._run_over(marks.run)

    def _run_over(self, run: str) -> str | None:
        if run.startswith(_LOCAL):
            host, _, pid = run[len(_LOCAL) :].rpartition("-")
            if host == self._host and pid.isdigit() and _process_gone(int(pid)):
                return f"its run (process {pid} on this machine) is gone"
            return None
        run_id, _, attempt = run.rpartition("-")
        mine_id, _, mine_attempt = self.mine.run.rpartition("-")
        if not (run_id.isdigit() and attempt.isdigit()):
            return None
        if run_id == mine_id and mine_attempt.isdigit() and int(attempt) < int(mine_attempt):
            return f"its run {run_id} attempt {attempt} is over (this is attempt {mine_attempt})"
        if run_id != mine_id and self._runs.is_over(run_id):
            return f"its run {run_id} is over (GitHub says completed)"
        return None


__all__ = ["DEPLOYMENT_FIELD", "RUN_FIELD", "LeftoverKeys", "RunMark", "line_marks"]
