"""`ai-deploy deploy`: the CI entry (ai_deploy.ci.flow) from the command line."""

from __future__ import annotations

from pathlib import Path


def deploy(
    artifact: str,
    *,
    inventory: str | None,
    host: str | None,
    no_gcp: bool,
    dry_run: bool,
    data: list[str],
    health_attempts: int | None,
    health_interval: float | None,
    target_tag: str | None,
    network: str | None,
) -> int:
    from ai_deploy.ci.flow import run_deploy
    from ai_deploy.ci.options import DeployOptions

    opts = DeployOptions.from_env(
        Path(artifact),
        inventory=inventory,
        host=host,
        use_gcp=not no_gcp,
        dry_run=dry_run,
        data=data,
        health_attempts=health_attempts,
        health_interval_s=health_interval,
        target_tag=target_tag,
        network=network,
    )
    return run_deploy(opts)
