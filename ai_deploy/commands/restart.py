"""`ai-deploy restart`: restart the current release on each host, one host at a time, behind the
same gate as a deploy (lock, restart, health check, revisions.log line `restart`). A host where
the release does not come back healthy stops the run: the hosts after it are left as they are."""

from __future__ import annotations

from ai_deploy.ci.exitcodes import exit_for_outcomes
from ai_deploy.commands.hostlines import HostLines, PrintedRemote
from ai_deploy.commands.status import layout_of
from ai_deploy.host.facts import read_tree
from ai_deploy.host.outcome import FAILED, HostOutcome
from ai_deploy.host.release.gate import put_in_service
from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.host.settings import Spec
from ai_deploy.inventory import connected


def restart_host(remote: PyinfraRemote) -> HostOutcome:
    """Put the release `current` names back in service on REMOTE's host through the gate."""
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
    outcomes: list[HostOutcome] = []
    with connected(inventory) as hosts:
        out = HostLines([h.name for h in hosts])
        for h in hosts:
            out.out(h.name, "restarting behind the health gate")
            outcome = restart_host(PrintedRemote(h.host, out))
            outcomes.append(outcome)
            if outcome.ok:
                out.out(h.name, f"release {outcome.release} restarted and healthy")
                continue
            out.err(h.name, f"{outcome.status} ({outcome.phase}): {outcome.reason}")
            skipped = [other.name for other in hosts[len(outcomes) :]]
            if skipped:
                out.err(h.name, f"stopping here; not restarted: {', '.join(skipped)}")
            break
    return exit_for_outcomes(outcomes, [o.host for o in outcomes])
