"""The deploy's settings that come from environment variables (the workflow's secrets and a
few switches), listed for `ai-deploy config` with their value or default; secrets masked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ai_deploy.settings.ssh import OLD_SSH_KEY_ENV, SSH_KEY_ENV, SSH_USER_ENV

SECRET = "secret"


@dataclass(frozen=True)
class EnvSetting:
    name: str
    default: str  # what applies when unset ("" for nothing)
    meaning: str
    secret: bool = False


ENV_SETTINGS: tuple[EnvSetting, ...] = (
    EnvSetting("GCP_PROJECT_ID", "", "the GCP project (else the credentials' project)"),
    EnvSetting("GCP_ZONE", "", "the instance's zone"),
    EnvSetting("GCP_INSTANCE", "", "the GPU VM; with GCP_ZONE, day-2 commands reach it too"),
    EnvSetting("AI_DEPLOY_ENVIRONMENT", "", "the ai-deploy.toml environment (set by -e)"),
    EnvSetting("AI_DEPLOY_SETTINGS", "", "the settings file (else ./ai-deploy.toml)"),
    EnvSetting("AI_DEPLOY_SSH_TRANSPORT", "direct", "direct (firewall window) or iap"),
    EnvSetting(
        "AI_DEPLOY_HOST_KEYS", "accept-new", "without published host keys: accept-new, require"
    ),
    EnvSetting("AI_DEPLOY_TARGET_TAG", "ai-server", "the network tag the window's rule targets"),
    EnvSetting("AI_DEPLOY_NETWORK", "default", "the VPC network of the rule"),
    EnvSetting("AI_DEPLOY_SSH_MODE", "metadata", "the run's key: metadata, oslogin, provided"),
    EnvSetting(
        SSH_USER_ENV,
        "",
        "the SSH login, over ssh_user (else ubuntu; a GCP run's own key: ai-deploy)",
    ),
    EnvSetting(SSH_KEY_ENV, "", "the SSH key's text or path, over ssh_key", secret=True),
    EnvSetting(OLD_SSH_KEY_ENV, "", f"the old name of {SSH_KEY_ENV}", secret=True),
    EnvSetting("AI_DEPLOY_HEALTH_URL", "", "the outside health check (else the instance's)"),
    EnvSetting("AI_DEPLOY_HEALTH_ATTEMPTS", "12", "outside health checks"),
    EnvSetting("AI_DEPLOY_HEALTH_INTERVAL_S", "5", "seconds between them"),
    EnvSetting("AI_DEPLOY_REQUIRE_SHA256", "true in CI", "require the artifact's .sha256"),
    EnvSetting("AI_DEPLOY_MYIP_URLS", "two https services", "where the runner's address is asked"),
    EnvSetting("AI_DEPLOY_SLACK_WEBHOOK_URL", "", "Slack notifications", secret=True),
    EnvSetting("AI_DEPLOY_DISCORD_WEBHOOK_URL", "", "Discord notifications", secret=True),
)


def env_rows(environ: Mapping[str, str], mask: str) -> list[tuple[str, str, str]]:
    """(name, value as it may be shown, source) per setting."""
    rows = []
    for s in ENV_SETTINGS:
        value = environ.get(s.name, "")
        if value:
            rows.append((s.name, mask if s.secret else value, "environment variable"))
        else:
            rows.append((s.name, s.default, f"default (unset: {s.meaning})"))
    return rows


__all__ = ["ENV_SETTINGS", "EnvSetting", "env_rows"]
