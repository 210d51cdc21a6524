"""What `rollback` and `restart` share with `deploy`: the flags that name the targets (--host,
--no-gcp, beside -i / -e and GCP_INSTANCE or a label in the environment), and the run itself,
which is `ai-deploy deploy`'s engine (ai_deploy.ci.flow) with another action on each host."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ai_deploy.commands.options import add_inventory, add_target
from ai_deploy.commands.verbosity import add_verbose


def add_targets(parser: argparse.ArgumentParser) -> None:
    """-i / -e, --host and --no-gcp on PARSER, with -v (pyinfra's whole stream)."""
    add_inventory(parser)
    add_verbose(parser)
    add_target(parser, "this address only (no lookup)")


def run_verb(args: argparse.Namespace, action: str, release: str | None = None) -> int:
    """ACTION ("rollback", to RELEASE or each host's previous one, or "restart") on the targets
    ARGS name, through the deploy's engine; returns its exit code."""
    from ai_deploy.ci.flow import run_deploy
    from ai_deploy.ci.options import DeployOptions

    opts = DeployOptions.from_env(
        Path(os.devnull),  # no artifact: the hosts' own releases
        inventory=args.inventory,
        host=args.host,
        use_gcp=not args.no_gcp,
        action=action,
        rollback_to=release,
    )
    return run_deploy(opts)
