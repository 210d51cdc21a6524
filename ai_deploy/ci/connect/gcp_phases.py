"""The GCP phases every target kind may need before the rollout: authenticate, find the
runner's address, open the firewall window for it (a context on the run's stack)."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta

from ai_deploy.ci.context import Run
from ai_deploy.ci.options import PhaseFailed
from ai_deploy.report import output as ci_output


def _say(message: str) -> None:
    print(message, flush=True)


def auth_phase(run: Run) -> None:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.auth import load_credentials

    with run.phases.phase("auth", "Authenticate to GCP"):
        try:
            run.session = load_credentials(run.opts.project, environ=run.environ)
        except GcpError as exc:
            raise PhaseFailed("auth", str(exc)) from exc
        _say(f"authenticated for project {run.session.project} ({run.session.source})")


def runner_ip_phase(run: Run) -> None:
    from ai_deploy.ci.connect.myip import MyIpSettings, RunnerIpError, find_runner_address

    with run.phases.phase("runner-ip", "Find this runner's address"):
        try:
            found = find_runner_address(MyIpSettings.from_env(run.environ))
        except RunnerIpError as exc:
            raise PhaseFailed("runner-ip", str(exc)) from exc
        run.runner_ip = found.address
        _say(f"runner address: {found.address} (from {', '.join(found.sources)})")
        for note in found.notes:
            ci_output.warning(note, title="runner address", env=run.environ)


def firewall_phase(run: Run, stack: ExitStack) -> None:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.firewall import firewall_window

    opts = run.opts
    with run.phases.phase("firewall", "Open the SSH firewall window"):
        try:
            window = stack.enter_context(
                firewall_window(
                    run.session.credentials,
                    run.session.project,
                    source_ip=run.runner_ip,
                    target_tag=opts.target_tag,
                    network=opts.network,
                    prefix=opts.rule_prefix,
                    stale_after=timedelta(minutes=opts.stale_rule_minutes),
                    environ=run.environ,
                )
            )
        except GcpError as exc:
            raise PhaseFailed("firewall", str(exc)) from exc
        _say(f"firewall rule {window.name}: tcp:22 from {window.source_range}")
