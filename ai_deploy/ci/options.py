"""What `ai-deploy deploy` was asked to do (DeployOptions, from flags and the environment) and
the host settings it reads from group_data exactly as the pyinfra run does (HostSettings)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ai_deploy.artifact.check import ArtifactLimits

# The prod inventory reads its hosts from AI_DEPLOY_HOSTS; group settings do not depend on the
# address, so they are read before the address is known with this stand-in (never connected).
SETTINGS_PROBE_HOST = "settings.invalid"
SSH_TRANSPORTS = ("direct", "iap")
HOST_KEY_POLICIES = ("accept-new", "require")


class PhaseFailed(Exception):
    """A phase ended the deploy; `phase` names it (see exitcodes.PHASE_EXIT)."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


@dataclass
class DeployOptions:
    artifact: Path
    inventory: str | None = None  # default inventories/prod.py (hosts come through env)
    host: str | None = None  # a plain address: no instance lookup
    project: str | None = None
    zone: str | None = None
    instance: str | None = None
    use_gcp: bool = True  # False: no auth, no firewall window, no ephemeral key
    target_tag: str = "ai-server"
    network: str = "default"
    rule_prefix: str = "ai-deploy-ssh-"
    stale_rule_minutes: int = 60
    health_attempts: int = 12
    health_interval_s: float = 5.0
    health_timeout_s: float = 5.0
    health_url: str | None = None  # default: http://ADDRESS:app_port/health_path
    ssh_wait_s: float = 180.0
    # "direct": the instance's external address through a per-run firewall window; "iap":
    # through Identity-Aware Proxy (gcloud's tunnel on a local port), no window, no external IP
    ssh_transport: str = "direct"
    # where guest attributes publish no host keys: "accept-new" (trust on first use, said in
    # the output) or "require" (stop)
    host_keys: str = "accept-new"
    dry_run: bool = False
    data: list[str] = field(default_factory=list)
    # a fleet (no --host, no GCP_INSTANCE): the hosts of the inventory, or these of them
    hosts: list[str] = field(default_factory=list)
    canary: str | None = None  # None: rollout_canary of group_data
    batch_size: str | None = None  # None: rollout_batch_size
    batch_wait_s: float | None = None  # None: rollout_wait_s
    plan: bool = False  # print the plan, change nothing
    json: bool = False  # the result as JSON on stdout (everything else on stderr)
    # what the rollout does on each host: "deploy" (ARTIFACT), "rollback" (to ROLLBACK_TO, a
    # release id, or None: each host's previous release) or "restart" (its current release)
    action: str = "deploy"
    rollback_to: str | None = None

    @classmethod
    def from_env(
        cls, artifact: Path, env: Mapping[str, str] | None = None, **kw: object
    ) -> DeployOptions:
        e = os.environ if env is None else env
        opts = cls(
            artifact=artifact,
            project=e.get("GCP_PROJECT_ID") or None,
            zone=e.get("GCP_ZONE") or None,
            instance=e.get("GCP_INSTANCE") or None,
            target_tag=e.get("AI_DEPLOY_TARGET_TAG", "ai-server"),
            network=e.get("AI_DEPLOY_NETWORK", "default"),
            health_attempts=int(e.get("AI_DEPLOY_HEALTH_ATTEMPTS", "12")),
            health_interval_s=float(e.get("AI_DEPLOY_HEALTH_INTERVAL_S", "5")),
            health_url=e.get("AI_DEPLOY_HEALTH_URL") or None,
            ssh_transport=e.get("AI_DEPLOY_SSH_TRANSPORT") or "direct",
            host_keys=e.get("AI_DEPLOY_HOST_KEYS") or "accept-new",
        )
        for key, value in kw.items():
            if value is not None:
                setattr(opts, key, value)
        return opts

    @property
    def preview(self) -> bool:
        """--plan or --dry-run: nothing changes on any host and no lock is taken."""
        return self.plan or self.dry_run

    def check_access_settings(self) -> None:
        """PhaseFailed("config") naming the setting when the transport or host-key setting has
        a value this tool does not know."""
        if self.ssh_transport not in SSH_TRANSPORTS:
            raise PhaseFailed(
                "config",
                f"AI_DEPLOY_SSH_TRANSPORT={self.ssh_transport!r}: use one of "
                + ", ".join(SSH_TRANSPORTS),
            )
        if self.host_keys not in HOST_KEY_POLICIES:
            raise PhaseFailed(
                "config",
                f"AI_DEPLOY_HOST_KEYS={self.host_keys!r}: use one of "
                + ", ".join(HOST_KEY_POLICIES),
            )


@dataclass(frozen=True)
class HostSettings:
    """The group_data settings the CI entry needs, as the pyinfra run sees them (read by
    ai_deploy.ci.settings_probe)."""

    app_module: str
    app_port: int
    health_path: str
    deploy_strategy: str
    app_name: str
    ssh_user: str | None
    env_file: str | None = None
    limits: ArtifactLimits | None = None  # None: group_data's defaults
    models_allow_http: bool = False  # models.toml may name http:// URLs
    ssh_key: str | None = None  # a path, from ai-deploy.toml or the inventory
    ssh_sources: dict[str, str] = field(default_factory=dict)  # ssh_user / ssh_key -> source
