"""`ai-deploy restart`: restart the current release on each host, one host at a time, behind the
same gate as a deploy (lock, restart, health check, revisions.log line `restart`). A host where
the release does not come back healthy stops the run: the hosts after it are left as they are.
It prints each host's verdict, warnings and errors (each step of the gate too with -v) and ends
with the same closing lines as a deploy: the phase times and one summary."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ai_deploy.commands.closing import print_closing
from ai_deploy.commands.hostlines import HostLines, PrintedRemote
from ai_deploy.commands.options import add_inventory
from ai_deploy.commands.status import layout_of
from ai_deploy.commands.verbosity import add_verbose
from ai_deploy.host.outcome import FAILED, HostOutcome
from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.host.settings import Spec
from ai_deploy.inventory import connected
from ai_deploy.report import output as ci_output
from ai_deploy.report.notify import DeployEvent
from ai_deploy.rollout.exitcodes import EXIT_OK, exit_for_outcomes


def restart_host(remote: PyinfraRemote) -> HostOutcome:
    """Put the release `current` names back in service on REMOTE's host through the gate."""
    from ai_deploy.host.facts import read_tree  # pyinfra: not for building the parser
    from ai_deploy.host.gate import put_in_service

    tree = read_tree(remote, layout_of(remote))
    if not tree.current:
        return HostOutcome(
            host=remote.name,
            action="restart",
            release="-",
            status=FAILED,
            phase="release",
            reason="no release is deployed on this host: nothing to restart",
        )
    spec = Spec.from_data(remote.data, action="restart", release_id=tree.current)
    return put_in_service(remote, spec, host=remote.name, have_release=True)


def restart(inventory: str | None) -> int:
    started = time.monotonic()
    outcomes: list[HostOutcome] = []
    phases = ci_output.Phases()
    service = DeployEvent.service
    title = "Restart behind the health gate, one host at a time"
    with phases.phase("restart", title), connected(inventory) as hosts:
        out = HostLines([h.name for h in hosts])
        service = str(hosts[0].data.app_name) if hosts else service
        for h in hosts:
            outcome = restart_host(PrintedRemote(h.host, out, progress=ci_output.verbose()))
            outcomes.append(outcome)
            if outcome.ok:
                out.out(h.name, f"release {outcome.release} restarted and healthy")
                continue
            out.err(h.name, f"{outcome.status} ({outcome.phase}): {outcome.reason}")
            skipped = [other.name for other in hosts[len(outcomes) :]]
            if skipped:
                out.err(h.name, f"stopping here; not restarted: {', '.join(skipped)}")
            break
    code = exit_for_outcomes(outcomes, [o.host for o in outcomes])
    if code != EXIT_OK:
        phases.fail("restart")
    print_closing("restart", service, code, outcomes, phases, started)
    return code


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "restart",
        help="restart the current release behind the health gate, one host at a time",
        description="Restart the service on each host in turn through the deploy's gate "
        "(lock, restart, health check, a `restart` line in revisions.log). A host that does "
        "not come back healthy stops the run; exit codes as for deploy (14, 15, 16).",
    )
    add_inventory(parser)
    add_verbose(parser, "each step of the health gate, not only each host's verdict")
    parser.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return restart(args.inventory)
