"""`ai-deploy init [DIR]`: the app repository's ai-deploy.toml and workflow, and the one-time
GCP and GitHub set-up printed with the names filled in."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def run_init(
    directory: str,
    *,
    force: bool,
    environment: str,
    project: str | None,
    zone: str | None,
    instance: str | None,
    repository: str | None,
    service_account: str,
    transport: str,
    repository_id: str | None = None,
) -> int:
    """Write the files and print the set-up; 2 (nothing written) when a value given, or the
    origin remote's repository, breaks the rule for where it goes (see appinit.values)."""
    # appinit loads the GCP client library: not for building the parser.
    from ai_deploy.appinit.init import InitError, init_app, repository_of
    from ai_deploy.appinit.next_steps import Target, unfilled
    from ai_deploy.appinit.values import check

    app_dir = Path(directory)
    repository_option = "--repository"
    if repository is None:
        repository, repository_option = repository_of(app_dir), "the origin remote's repository"
    given = [
        ("project", project, "--project"),
        ("zone", zone, "--zone"),
        ("instance", instance, "--instance"),
        ("repository", repository, repository_option),
        ("repository id", repository_id, "--repository-id"),
        ("environment", environment, "-e/--environment"),
        ("service account", service_account, "--service-account"),
    ]
    try:
        for kind, value, option in given:
            if value is not None:
                check(kind, value, option)
        target = Target(
            project=project or Target.project,
            zone=zone or Target.zone,
            instance=instance or Target.instance,
            repository=repository or Target.repository,
            repository_id=repository_id,
            environment=environment,
            service_account=service_account,
            transport=transport,
        )
        print(init_app(app_dir, target, force=force))
    except (InitError, ValueError) as exc:  # BadValue, or a name TOML cannot hold
        print(f"ai-deploy init: {exc}", file=sys.stderr)
        return 2
    for warning in unfilled(target, directory):
        print(f"ai-deploy init: warning: {warning}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "init",
        help="write ai-deploy.toml and .github/workflows/ai-cicd.yml into an app repository",
        description="Write the app's settings (ai-deploy.toml: every setting with its default, "
        "and its environments) and its GitHub workflow, then print the one-time GCP and GitHub "
        "set-up as commands with the names filled in. Refuses to overwrite without --force.",
    )
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR", help="the app (default .)")
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    parser.add_argument(
        "-e", "--environment", metavar="ENV", help="the workflow's environment (production)"
    )
    parser.add_argument("--project", help="GCP project id, filled into the printed commands")
    parser.add_argument("--zone", help="the instance's zone")
    parser.add_argument("--instance", help="the GPU VM's name")
    parser.add_argument("--repository", metavar="OWNER/REPO", help="default: the origin remote")
    parser.add_argument(
        "--repository-id",
        metavar="N",
        help="the repository's number, which the printed Workload Identity set-up trusts "
        "(`gh api repos/OWNER/REPO --jq .id`; default: that command, in the printed set-up)",
    )
    parser.add_argument(
        "--service-account", default="ai-deploy", metavar="NAME", help="default ai-deploy"
    )
    parser.add_argument(
        "--transport",
        choices=("direct", "iap"),
        default="direct",
        help="SSH through a per-deploy firewall window (direct) or IAP",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_init(
        args.dir,
        force=args.force,
        environment=args.environment or "production",
        project=args.project,
        zone=args.zone,
        instance=args.instance,
        repository=args.repository,
        service_account=args.service_account,
        transport=args.transport,
        repository_id=args.repository_id,
    )
