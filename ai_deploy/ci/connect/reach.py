"""Day-2 commands (`status`, `lock`, `logs`, `exec`, ...; `rollback` and `restart` are rollouts
of the deploy's engine and open access themselves) reach a GCP instance the way `ai-deploy
deploy` does: credentials (Workload Identity in CI, Application Default Credentials on a
laptop), the firewall window for this machine's address or the IAP tunnel, the instance's
pinned host keys and a key made for this run. The command itself then runs again as a child
with the environment the inventory needs (AI_DEPLOY_HOSTS, the key, known_hosts, the tunnel's
endpoint), and everything is closed when it ends, on every exit.

Without GCP_ZONE and GCP_INSTANCE the command runs directly on its inventory, as before."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ai_deploy.ci.connect.access import open_access
from ai_deploy.ci.context import Run
from ai_deploy.ci.fleet import fleet_env
from ai_deploy.ci.options import DeployOptions, PhaseFailed
from ai_deploy.report import output as ci_output
from ai_deploy.rollout import exitcodes

REACHED_ENV = "AI_DEPLOY_REACHED"  # set in the child: the hosts are reachable already


def through_gcp(environ: Mapping[str, str]) -> bool:
    """Whether a day-2 command must open the way to a GCP instance first."""
    return bool(
        environ.get("GCP_ZONE") and environ.get("GCP_INSTANCE") and not environ.get(REACHED_ENV)
    )


@contextmanager
def reached(inventory: str, environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment with which INVENTORY reaches the instance, for the block's duration."""
    opts = DeployOptions.from_env(Path(os.devnull), environ, inventory=inventory)
    opts.check_access_settings()
    run = Run(opts, dict(environ), ci_output.Phases())
    run.inventory = inventory
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="ai-deploy-ssh-") as tmp:
        open_access(run, stack, Path(tmp))
        yield {**fleet_env(run), REACHED_ENV: "1"}


def run_reached(inventory: str, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """`ai-deploy ARGV` again, as a child that reaches the instance through what `reached`
    opened; the window (or tunnel) and the key are removed when it ends, however it ends."""
    from ai_deploy.gcp import Terminated, raise_on_termination

    try:
        with raise_on_termination(), reached(inventory, environ) as env:
            print(f"==> ai-deploy {' '.join(argv)}", flush=True)
            child = subprocess.Popen([sys.executable, "-m", "ai_deploy.cli", *argv], env=env)
            try:
                return child.wait()
            finally:
                if child.poll() is None:  # stopped by a signal: the child first, then cleanup
                    child.terminate()
                    try:
                        child.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
    except PhaseFailed as exc:
        print(f"ai-deploy: {exc}", file=sys.stderr)
        return exitcodes.PHASE_EXIT.get(exc.phase, exitcodes.EXIT_UNEXPECTED)
    except Terminated as exc:
        print(f"ai-deploy: {exc}; the window and the key were removed", file=sys.stderr)
        return exc.exit_code


__all__ = ["REACHED_ENV", "reached", "run_reached", "through_gcp"]
