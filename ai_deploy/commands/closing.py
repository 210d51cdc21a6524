"""How rollback and restart end, as a deploy does (ai_deploy.report.output.closing_lines): each
phase with its time, then one summary line built from what the hosts reported."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ai_deploy.host.outcome import HostOutcome
from ai_deploy.report import output as ci_output
from ai_deploy.report.notify import DeployEvent, Outcome
from ai_deploy.rollout.exitcodes import EXIT_OK


def print_closing(
    action: str,
    service: str,
    code: int,
    outcomes: Sequence[HostOutcome],
    phases: ci_output.Phases,
    started: float,
    *,
    release: str = "-",
) -> None:
    """Print the closing lines of ACTION on SERVICE, which exits with CODE after the hosts
    reported OUTCOMES; RELEASE names the release when no host reported one."""
    event = DeployEvent(
        outcome=Outcome.SUCCESS if code == EXIT_OK else Outcome.FAILURE,
        release=", ".join(sorted({o.release for o in outcomes})) or release,
        hosts=[o.host for o in outcomes],
        duration_s=time.monotonic() - started,
        failed_phase=phases.failed,
        service=service,
        action=action,
    )
    for line in ci_output.closing_lines(event, phases.durations):
        print(line, flush=True)
