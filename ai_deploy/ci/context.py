"""The typed context the CI entry's phases share: what was asked, and what each phase learnt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_deploy.ci import output as ci_output
from ai_deploy.ci.options import DeployOptions, HostSettings
from ai_deploy.settings.ssh import handed_ssh_env


@dataclass
class Run:
    """What the phases learn, in order."""

    opts: DeployOptions
    environ: dict[str, str]
    phases: ci_output.Phases
    inventory: str = ""
    settings: HostSettings | None = None
    release: str = "unknown"
    session: Any = None  # GCP credentials, when use_gcp
    runner_ip: str | None = None
    address: str = ""
    hosts: list[str] = field(default_factory=list)
    user: str = ""
    key: Path | None = None
    known_hosts: Path | None = None
    access: Any = None  # ai_deploy.ci.ssh.SshAccess: where SSH connects, pinned host keys
    pinned: tuple[Any, ...] = ()  # ai_deploy.gcp.hostkeys.HostKey, read from guest attributes
    health_address: str = ""  # where the outside health check goes, when not `address` (IAP)
    lock_hash: str = ""  # of the artifact's uv.lock
    model_sizes: dict[str, int] = field(default_factory=dict)  # its model files: sha256 -> size
    fleet: Any = None  # ai_deploy.rollout.run.Outcome of a rollout over several hosts
    # a fleet found by label: (instance, zone, address) each, their pinned keys by instance,
    # and the host key policy for all of them ("yes" when every instance published its keys)
    targets: list[tuple[str, str, str]] = field(default_factory=list)
    pinned_of: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    strict_host_keys: str = "accept-new"
    final_message: str = ""  # what the run said last (its --json result's message)

    def pyinfra_env(self) -> dict[str, str]:
        """The pyinfra run's environment: the inventory reaches the host with this run's user,
        key (a path in the one key variable) and known_hosts."""
        access = self.access
        through = access is not None and (access.host, access.port) != (self.address, 22)
        return handed_ssh_env(
            {**self.environ, "AI_DEPLOY_HOSTS": self.address},
            user=self.user,
            key=self.key,
            known_hosts=self.known_hosts,
            strict=access.strict if access is not None else None,
            # Through IAP: the host keeps its instance name; SSH goes to the tunnel.
            endpoints=f"{self.address}={access.host}:{access.port}" if through else None,
        )

    @property
    def health_url(self) -> str:
        if self.opts.health_url:
            return self.opts.health_url
        assert self.settings is not None
        address = self.health_address or self.address
        return f"http://{address}:{self.settings.app_port}{self.settings.health_path}"
