"""`ai-deploy init [DIR]`: the app repository's ai-deploy.toml and workflow, and the one-time
GCP and GitHub set-up printed with the names filled in."""

from __future__ import annotations

import sys
from pathlib import Path

from ai_deploy.appinit.init import InitError, init_app, repository_of
from ai_deploy.appinit.next_steps import Target, unfilled
from ai_deploy.appinit.values import check


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
