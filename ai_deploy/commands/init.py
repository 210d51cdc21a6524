"""`ai-deploy init [DIR]`: the app repository's ai-deploy.toml and workflow, and the one-time
GCP and GitHub set-up printed with the names filled in."""

from __future__ import annotations

import sys
from pathlib import Path

from ai_deploy.appinit.init import InitError, init_app, repository_of
from ai_deploy.appinit.next_steps import Target, unfilled


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
) -> int:
    app_dir = Path(directory)
    target = Target(
        project=project or Target.project,
        zone=zone or Target.zone,
        instance=instance or Target.instance,
        repository=repository or repository_of(app_dir) or Target.repository,
        environment=environment,
        service_account=service_account,
        transport=transport,
    )
    try:
        print(init_app(app_dir, target, force=force))
    except InitError as exc:
        print(f"ai-deploy init: {exc}", file=sys.stderr)
        return 2
    for warning in unfilled(target, directory):
        print(f"ai-deploy init: warning: {warning}", file=sys.stderr)
    return 0
