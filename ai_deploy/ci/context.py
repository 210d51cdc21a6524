"""The typed context the CI entry's phases share: what was asked, and what each phase learnt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_deploy.ci.options import DeployOptions, HostSettings
from ai_deploy.report import output as ci_output


@dataclass
class Run:
    """What the phases learn, in order. Every deploy is a rollout over `targets` (one target
    is a rollout of one) or, with none, over the hosts of the inventory."""

    opts: DeployOptions
    environ: dict[str, str]
    phases: ci_output.Phases
    inventory: str = ""
    settings: HostSettings | None = None
    release: str = "unknown"
    session: Any = None  # GCP credentials, when use_gcp
    runner_ip: str | None = None
    hosts: list[str] = field(default_factory=list)
    user: str = ""
    key: Path | None = None
    known_hosts: Path | None = None
    lock_hash: str = ""  # of the artifact's uv.lock
    model_sizes: dict[str, int] = field(default_factory=dict)  # its model files: sha256 -> size
    fleet: Any = None  # ai_deploy.rollout.run.Outcome of the rollout
    # the hosts named by the run (--host, GCP_INSTANCE, a label or filter): (host name, zone,
    # address) each (a plain host: its address, no zone), their pinned keys by name, and the
    # host key policy for all of them ("yes" when every one's keys are pinned)
    targets: list[tuple[str, str, str]] = field(default_factory=list)
    pinned_of: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    strict_host_keys: str = "accept-new"
    # where SSH connects for a target when not its address, port 22 (IAP: a tunnel's port)
    tunnels: dict[str, tuple[str, int]] = field(default_factory=dict)
    final_message: str = ""  # what the run said last (its --json result's message)

    def endpoint(self, name: str, address: str) -> tuple[str, int]:
        """(host, port) where SSH reaches target NAME at ADDRESS."""
        return self.tunnels.get(name, (address, 22))

    def known_hosts_name(self, name: str, address: str) -> str:
        """How ssh and paramiko name target NAME's endpoint in known_hosts."""
        host, port = self.endpoint(name, address)
        return host if port == 22 else f"[{host}]:{port}"
