"""Small typed Compute Engine calls: each takes the project and names explicitly and, when it
starts an operation, waits for that operation to finish before returning.

Clients, retries of transient answers and operation waiting live in ai_deploy.gcp.operations
(its public names are re-exported here). A DONE operation that carries an error becomes an
`OperationError`. API errors (google.api_core.exceptions: NotFound, Forbidden, Conflict, ...)
propagate unchanged unless a function says otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1

from ai_deploy.gcp import GcpError, operations

# The firewall calls live in ai_deploy.gcp.firewalls; re-exported for callers of this module.
from ai_deploy.gcp.firewalls import (
    FirewallRule,
    create_firewall_rule,
    delete_firewall_rule,
    get_firewall_rule,
    list_all_firewall_rules,
    list_firewall_rules,
    network_path,
    wait_global_operation_named,
)
from ai_deploy.gcp.operations import (
    CALL_TIMEOUT,
    DEFAULT_OPERATION_TIMEOUT,
    ENDPOINT_ENV_VAR,
    OperationError,
    OperationUnreadable,
    backoff_delay,
    compute_client,
    compute_client_options,
    new_request_id,
    parse_timestamp,
    reasons,
    retry_transient,
    wait_global_operation,
    wait_zone_operation,
)

logger = logging.getLogger(__name__)

SSH_KEYS_METADATA_KEY = "ssh-keys"
# Writes of one metadata item tried while other writers keep changing the fingerprint (412).
METADATA_WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class InstanceInfo:
    """What the deploy needs to know about the VM."""

    name: str
    zone: str
    status: str
    nat_ip: str | None
    internal_ip: str | None
    network: str | None
    tags: tuple[str, ...]
    metadata: Mapping[str, str]
    metadata_fingerprint: str


def get_instance(credentials: Credentials, project: str, zone: str, instance: str) -> InstanceInfo:
    """The instance's external (NAT) and internal address, network, tags and metadata."""
    client = compute_client(compute_v1.InstancesClient, credentials)
    resource = client.get(project=project, zone=zone, instance=instance, timeout=CALL_TIMEOUT)
    nat_ip = internal_ip = network = None
    if resource.network_interfaces:
        nic = resource.network_interfaces[0]
        internal_ip = nic.network_i_p or None
        network = nic.network or None
        nat_ip = next((ac.nat_i_p for ac in nic.access_configs if ac.nat_i_p), None)
    return InstanceInfo(
        name=resource.name,
        zone=zone,
        status=resource.status,
        nat_ip=nat_ip,
        internal_ip=internal_ip,
        network=network,
        tags=tuple(resource.tags.items),
        metadata={item.key: item.value for item in resource.metadata.items},
        metadata_fingerprint=resource.metadata.fingerprint,
    )


def get_instance_nat_ip(credentials: Credentials, project: str, zone: str, instance: str) -> str:
    """The instance's external IPv4 address (networkInterfaces[0].accessConfigs[].natIP).

    Raises GcpError when the instance has none (no external IP to SSH or health-check).
    """
    info = get_instance(credentials, project, zone, instance)
    if not info.nat_ip:
        raise GcpError(
            f"instance {instance} in {zone} (project {project}) has no external IP: give it "
            "an access config, or deploy to its internal address from inside the VPC"
        )
    return info.nat_ip


def update_instance_metadata_item(
    credentials: Credentials,
    project: str,
    zone: str,
    instance: str,
    key: str,
    update: Callable[[str | None], str | None],
    *,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    on_started: Callable[[str], None] | None = None,
) -> str | None:
    """Set metadata item KEY to UPDATE(current value) without touching other items; None
    removes the item. Returns the value written.

    Writes with the metadata fingerprint just read, so a concurrent change is never
    overwritten: on 412 conditionNotMet (another writer changed the fingerprint) it reads
    again and retries with the fresh fingerprint, up to METADATA_WRITE_ATTEMPTS writes apart
    by a jittered backoff; the last 412 propagates (PreconditionFailed). No write
    happens when UPDATE returns the current value. Each write carries a requestId reused by
    its retries (5xx, 429, rate limits, resourceNotReady); ON_STARTED gets the operation's
    name once Compute accepted the write. Waits for the zone operation.
    """
    client = compute_client(compute_v1.InstancesClient, credentials)
    for attempt in range(1, METADATA_WRITE_ATTEMPTS + 1):
        info = get_instance(credentials, project, zone, instance)
        current = info.metadata.get(key)
        wanted = update(current)
        if wanted == current:
            return current
        items = [compute_v1.Items(key=k, value=v) for k, v in info.metadata.items() if k != key]
        if wanted is not None:
            items.append(compute_v1.Items(key=key, value=wanted))
        body = compute_v1.Metadata(fingerprint=info.metadata_fingerprint, items=items)
        request = compute_v1.SetMetadataInstanceRequest(
            project=project,
            zone=zone,
            instance=instance,
            metadata_resource=body,
            request_id=new_request_id(),
        )
        try:
            op = retry_transient(
                f"set metadata {key} on {instance}",
                lambda request=request: client.set_metadata_unary(  # type: ignore[misc]
                    request=request, timeout=CALL_TIMEOUT
                ),
            )
        except api_exceptions.PreconditionFailed:
            if attempt == METADATA_WRITE_ATTEMPTS:
                raise
            logger.info("metadata of %s changed concurrently; reading it again", instance)
            time.sleep(backoff_delay(attempt, operations.RETRY_BASE_S, operations.RETRY_CAP_S))
            continue
        if on_started is not None:
            on_started(op.name)
        wait_zone_operation(
            credentials,
            project,
            zone,
            op,
            what=f"set metadata {key} on {instance}",
            timeout=timeout,
        )
        return wanted
    raise AssertionError("unreachable")


def _lines(value: str | None) -> list[str]:
    return [line for line in (value or "").splitlines() if line.strip()]


def add_ssh_key_entry(
    credentials: Credentials,
    project: str,
    zone: str,
    instance: str,
    entry: str,
    *,
    drop: Callable[[str], bool] | None = None,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Append ENTRY (one `USER:KEY ...` line) to the instance's `ssh-keys` metadata, keeping
    every other line except those DROP returns True for (for example expired leftovers).
    Idempotent: an entry already present is not added twice."""

    def update(current: str | None) -> str | None:
        lines = [line for line in _lines(current) if not (drop and drop(line))]
        if entry.strip() not in (line.strip() for line in lines):
            lines.append(entry.strip())
        return "\n".join(lines) if lines else None

    update_instance_metadata_item(
        credentials,
        project,
        zone,
        instance,
        SSH_KEYS_METADATA_KEY,
        update,
        timeout=timeout,
        on_started=on_started,
    )


def wait_zone_operation_named(
    credentials: Credentials,
    project: str,
    zone: str,
    operation: str,
    *,
    what: str,
    timeout: float,
) -> compute_v1.Operation:
    """Wait for the zone operation called OPERATION (see wait_zone_operation)."""
    pending = compute_v1.Operation(name=operation, status=compute_v1.Operation.Status.PENDING)
    return wait_zone_operation(credentials, project, zone, pending, what=what, timeout=timeout)


def remove_ssh_key_entries(
    credentials: Credentials,
    project: str,
    zone: str,
    instance: str,
    matches: Callable[[str], bool] | str,
    *,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
) -> int:
    """Remove from `ssh-keys` every line equal to MATCHES (a string) or for which MATCHES
    returns True; the item goes away when no line is left. Returns how many lines went;
    0 (nothing written) when none matched."""
    predicate: Callable[[str], bool]
    if isinstance(matches, str):
        target = matches.strip()

        def predicate(line: str) -> bool:
            return line.strip() == target

    else:
        predicate = matches
    removed = 0

    def update(current: str | None) -> str | None:
        nonlocal removed
        lines = _lines(current)
        kept = [line for line in lines if not predicate(line)]
        removed = len(lines) - len(kept)
        if not removed:
            return current
        return "\n".join(kept) if kept else None

    update_instance_metadata_item(
        credentials, project, zone, instance, SSH_KEYS_METADATA_KEY, update, timeout=timeout
    )
    return removed


__all__ = [
    "DEFAULT_OPERATION_TIMEOUT",
    "ENDPOINT_ENV_VAR",
    "SSH_KEYS_METADATA_KEY",
    "FirewallRule",
    "InstanceInfo",
    "OperationError",
    "OperationUnreadable",
    "add_ssh_key_entry",
    "compute_client_options",
    "create_firewall_rule",
    "delete_firewall_rule",
    "get_firewall_rule",
    "get_instance",
    "get_instance_nat_ip",
    "list_all_firewall_rules",
    "list_firewall_rules",
    "network_path",
    "new_request_id",
    "parse_timestamp",
    "reasons",
    "remove_ssh_key_entries",
    "update_instance_metadata_item",
    "wait_global_operation",
    "wait_global_operation_named",
    "wait_zone_operation",
    "wait_zone_operation_named",
]
