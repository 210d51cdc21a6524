"""`ai-deploy deploy`: the CI entry (ai_deploy.ci.flow) from the command line: its flags, and
the options they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ai_deploy.commands.options import add_inventory, add_target
from ai_deploy.commands.verbosity import add_verbose
from ai_deploy.rollout.exitcodes import TABLE


def add_parser(sub: Any) -> None:
    deploy = sub.add_parser(
        "deploy",
        help="the CI entry: GCP auth, firewall window, ephemeral SSH key, pyinfra, health, "
        "notifications; a rollout over several hosts",
        description="Deploy ARTIFACT to the GCP instance named by GCP_PROJECT_ID, GCP_ZONE and "
        "GCP_INSTANCE (or to --host), with the app's settings (group_data, ai-deploy.toml and its "
        "environment, --data) applied to whatever the target. With "
        "neither, to every host of the inventory (or those of --hosts) as a rollout: every "
        "host's lock taken first, the plan printed, a canary, then batches; any failure "
        "switches back every host the rollout switched.",
        epilog=TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deploy.add_argument("--artifact", required=True, metavar="PATH", help="the release tar.gz")
    add_inventory(deploy)
    add_verbose(deploy)
    add_target(deploy, "deploy to this address (no lookup)")
    deploy.add_argument(
        "--dry-run",
        action="store_true",
        help="the plan, then pyinfra's dry run for each host (same user, key and settings); "
        "changes nothing on any host, takes no lock, notifies nobody",
    )
    deploy.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="passed to pyinfra"
    )
    deploy.add_argument(
        "--verify-models",
        action="store_true",
        help="hash the release's model files on each host again first; damaged ones are "
        "fetched again (--data models_verify=true)",
    )
    deploy.add_argument("--health-attempts", type=int, help="outside health checks (default 12)")
    deploy.add_argument("--health-interval", type=float, help="seconds between them (default 5)")
    deploy.add_argument("--target-tag", help="instances the SSH rule targets (default ai-server)")
    deploy.add_argument("--network", help="VPC network of the SSH rule (default default)")
    fleet = deploy.add_argument_group("a rollout over several hosts")
    fleet.add_argument(
        "--hosts", metavar="NAME,...", help="only these hosts of the inventory (by name)"
    )
    fleet.add_argument(
        "--canary", metavar="N|P%", help="hosts that go first, alone (default rollout_canary: 1)"
    )
    fleet.add_argument(
        "--batch-size",
        metavar="N|P%",
        help=(
            "hosts per batch after it (default 25%%); a batch taking more hosts out of service "
            "than rollout_max_unavailable (default 1) allows is refused (exit 2)"
        ),
    )
    fleet.add_argument(
        "--batch-wait",
        type=float,
        metavar="SECONDS",
        help="after each step, watch its hosts' health this long (default rollout_wait_s: 0)",
    )
    fleet.add_argument(
        "--plan",
        action="store_true",
        help=(
            "print hosts, steps, releases, each host's method and expected time out of service, "
            "and the floor; change nothing, take no lock"
        ),
    )
    fleet.add_argument(
        "--json", action="store_true", help="the result as JSON on stdout, the rest on stderr"
    )
    deploy.set_defaults(func=_cmd_deploy)


def _cmd_deploy(args: argparse.Namespace) -> int:
    from ai_deploy.ci.flow import run_deploy
    from ai_deploy.ci.options import DeployOptions
    from ai_deploy.settings.localpaths import resolve_data_items

    opts = DeployOptions.from_env(
        Path(args.artifact),
        inventory=args.inventory,
        host=args.host,
        use_gcp=not args.no_gcp,
        dry_run=args.dry_run,
        # File paths given here are the working directory's: every later step (the settings
        # probe, the rollout's lock holder, pyinfra) runs in the project's directory.
        data=resolve_data_items(
            [*args.data, *(["models_verify=true"] if args.verify_models else [])], Path.cwd()
        ),
        health_attempts=args.health_attempts,
        health_interval_s=args.health_interval,
        target_tag=args.target_tag,
        network=args.network,
        hosts=[h.strip() for h in (args.hosts or "").split(",") if h.strip()] or None,
        canary=args.canary,
        batch_size=args.batch_size,
        batch_wait_s=args.batch_wait,
        plan=args.plan or None,
        json=args.json or None,
    )
    return run_deploy(opts)
