"""SSH through Identity-Aware Proxy TCP forwarding, the way `gcloud compute ssh
--tunnel-through-iap` does it: no external IP, no per-deploy firewall rule.

What the VPC must already allow (checked here, never created): ingress from IAP's forwarding
range 35.235.240.0/20 to tcp:22 of the instance's tag. What the caller needs:
roles/iap.tunnelResourceAccessor. The tunnel itself is `gcloud compute start-iap-tunnel
INSTANCE 22 --local-host-port=localhost:0 --zone Z --project P`, run for the deploy; ssh and
pyinfra connect to the local port it reports (ai_deploy/ci/connect/tunnel.py).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from google.auth.credentials import Credentials
from google.cloud import compute_v1

from ai_deploy.gcp import GcpError
from ai_deploy.gcp.operations import CALL_TIMEOUT, compute_client, retry_transient

IAP_SOURCE_RANGE = "35.235.240.0/20"
IAP_ROLE = "roles/iap.tunnelResourceAccessor"
SSH_PORT = 22
TRANSPORTS = ("direct", "iap")
# What IAP mode's calls need: ai_deploy.gcp.permissions.IAP_PERMISSIONS.
DEFAULT_RULE_NAME = "allow-ssh-from-iap"
# Names gcloud accepts for instances, zones and projects; anything else is refused before it
# reaches a shell command line.
_NAME_RE = re.compile(r"[a-z][-a-z0-9.:]{0,99}")


class IapError(GcpError):
    """The standing rule is missing (the message carries the fix), or a name is unusable."""


@dataclass(frozen=True)
class StandingRule:
    """A rule that lets IAP reach tcp:22 of the target tag."""

    name: str
    source_ranges: tuple[str, ...]


def tunnel_argv(instance: str, zone: str, project: str) -> list[str]:
    """gcloud's arguments for an IAP tunnel to INSTANCE:22 on a local port it chooses (and
    reports as "Listening on port [N].")."""
    for what, value in (("instance", instance), ("zone", zone), ("project", project)):
        if not _NAME_RE.fullmatch(value):
            raise IapError(f"{what} name {value!r} is not a valid GCP name")
    return [
        "compute",
        "start-iap-tunnel",
        instance,
        str(SSH_PORT),
        "--local-host-port=localhost:0",
        "--zone",
        zone,
        "--project",
        project,
    ]


def _allows_ssh(allowed: compute_v1.Allowed) -> bool:
    if allowed.I_p_protocol.lower() not in ("tcp", "all", "6"):
        return False
    if not allowed.ports:
        return True
    for spec in allowed.ports:
        low, _, high = spec.partition("-")
        try:
            if int(low) <= SSH_PORT <= int(high or low):
                return True
        except ValueError:
            continue
    return False


def _covers_iap(source_ranges: list[str]) -> bool:
    iap = ipaddress.ip_network(IAP_SOURCE_RANGE)
    for cidr in source_ranges:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if net.version == 4 and iap.subnet_of(net):  # type: ignore[arg-type]
            return True
    return False


def find_standing_rule(
    credentials: Credentials, project: str, *, network: str, target_tag: str
) -> StandingRule | None:
    """An enabled INGRESS allow rule on NETWORK whose sources cover 35.235.240.0/20 and that
    allows tcp:22 to TARGET_TAG (or to every instance); None when there is none."""
    client = compute_client(compute_v1.FirewallsClient, credentials)
    rules = retry_transient(
        "list firewall rules",
        lambda: list(client.list(project=project, timeout=CALL_TIMEOUT)),
    )
    for rule in rules:
        if rule.disabled or (rule.direction or "INGRESS") != "INGRESS" or rule.denied:
            continue
        if rule.network.rstrip("/").rsplit("/", 1)[-1] != network:
            continue
        if rule.target_tags and target_tag not in rule.target_tags:
            continue
        if rule.target_service_accounts or rule.source_tags:
            continue  # narrower than "IAP may reach this tag": not counted
        if not _covers_iap(list(rule.source_ranges)):
            continue
        if any(_allows_ssh(a) for a in rule.allowed):
            return StandingRule(rule.name, tuple(rule.source_ranges))
    return None


def create_rule_command(project: str, network: str, target_tag: str) -> str:
    """The exact gcloud command that creates the standing rule."""
    return (
        f"gcloud compute firewall-rules create {DEFAULT_RULE_NAME} --project {project} "
        f"--network {network} --direction INGRESS --action allow --rules tcp:{SSH_PORT} "
        f"--source-ranges {IAP_SOURCE_RANGE} --target-tags {target_tag}"
    )


def missing_rule_message(project: str, network: str, target_tag: str) -> str:
    return (
        f"SSH through IAP needs a firewall rule that lets {IAP_SOURCE_RANGE} reach tcp:"
        f"{SSH_PORT} on tag {target_tag} (network {network}); none was found. Create it once "
        f"with:\n  {create_rule_command(project, network, target_tag)}\n"
        f"and give the deploying principal {IAP_ROLE} (for example: gcloud projects "
        f"add-iam-policy-binding {project} --member serviceAccount:SA --role {IAP_ROLE})"
    )


def require_standing_rule(
    credentials: Credentials, project: str, *, network: str, target_tag: str
) -> StandingRule:
    """The standing rule, or IapError whose message is the fix (command and role)."""
    rule = find_standing_rule(credentials, project, network=network, target_tag=target_tag)
    if rule is None:
        raise IapError(missing_rule_message(project, network, target_tag))
    return rule


__all__ = [
    "IAP_ROLE",
    "IAP_SOURCE_RANGE",
    "TRANSPORTS",
    "IapError",
    "StandingRule",
    "create_rule_command",
    "find_standing_rule",
    "missing_rule_message",
    "require_standing_rule",
    "tunnel_argv",
]
