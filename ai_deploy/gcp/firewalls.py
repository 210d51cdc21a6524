"""Small typed Compute Engine calls for firewall rules: insert (with a requestId reused by its
retries), get, delete and list, each waiting for the operation it started.

Clients, retries of transient answers and operation waiting live in ai_deploy.gcp.operations
(its public names are re-exported here). A DONE operation that carries an error becomes an
`OperationError`. API errors (google.api_core.exceptions: NotFound, Forbidden, Conflict, ...)
propagate unchanged unless a function says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1

from ai_deploy.gcp.operations import (
    CALL_TIMEOUT,
    DEFAULT_OPERATION_TIMEOUT,
    OperationError,
    compute_client,
    new_request_id,
    parse_timestamp,
    retry_transient,
    wait_global_operation,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FirewallRule:
    """The parts of a firewall rule the deploy cares about."""

    name: str
    network: str
    source_ranges: tuple[str, ...]
    target_tags: tuple[str, ...]
    allowed: tuple[tuple[str, tuple[str, ...]], ...]
    description: str
    created_at: datetime | None
    priority: int = 1000
    direction: str = "INGRESS"
    disabled: bool = False


def _firewall_rule(resource: compute_v1.Firewall) -> FirewallRule:
    return FirewallRule(
        name=resource.name,
        network=resource.network,
        source_ranges=tuple(resource.source_ranges),
        target_tags=tuple(resource.target_tags),
        allowed=tuple((a.I_p_protocol, tuple(a.ports)) for a in resource.allowed),
        description=resource.description,
        created_at=parse_timestamp(resource.creation_timestamp),
        priority=resource.priority if "priority" in resource else 1000,
        direction=resource.direction or "INGRESS",
        disabled=bool(resource.disabled),
    )


def network_path(project: str, network: str) -> str:
    """NETWORK as Compute wants it in a firewall rule: a bare name becomes
    `projects/PROJECT/global/networks/NAME`; paths and URLs pass unchanged."""
    if "/" in network:
        return network
    return f"projects/{project}/global/networks/{network}"


def create_firewall_rule(
    credentials: Credentials,
    project: str,
    *,
    name: str,
    source_ranges: Sequence[str],
    target_tags: Sequence[str],
    network: str = "default",
    ports: Sequence[str] = ("22",),
    protocol: str = "tcp",
    description: str = "",
    priority: int = 1000,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    request_id: str | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Create an ingress rule allowing PROTOCOL:PORTS from SOURCE_RANGES to instances with
    TARGET_TAGS on NETWORK at PRIORITY, and wait until the rule exists.

    The insert carries REQUEST_ID (a new one when None), reused by its retries. ON_STARTED
    is called with the operation's name as soon as Compute accepted the insert, so a caller
    interrupted later knows a rule may appear. Raises the API error (Conflict, Forbidden,
    ...) when the insert was refused; OperationError when the operation ended with an error
    (`finished`), OperationUnreadable / OperationError when its outcome is unknown.
    """
    rule = compute_v1.Firewall(
        name=name,
        network=network_path(project, network),
        direction="INGRESS",
        priority=priority,
        source_ranges=list(source_ranges),
        target_tags=list(target_tags),
        allowed=[compute_v1.Allowed(I_p_protocol=protocol, ports=list(ports))],
        description=description,
    )
    client = compute_client(compute_v1.FirewallsClient, credentials)
    request = compute_v1.InsertFirewallRequest(
        project=project, firewall_resource=rule, request_id=request_id or new_request_id()
    )
    op = retry_transient(
        f"create firewall rule {name}",
        lambda: client.insert_unary(request=request, timeout=CALL_TIMEOUT),
    )
    if on_started is not None:
        on_started(op.name)
    wait_global_operation(
        credentials, project, op, what=f"create firewall rule {name}", timeout=timeout
    )


def wait_global_operation_named(
    credentials: Credentials,
    project: str,
    operation: str,
    *,
    what: str,
    timeout: float,
) -> compute_v1.Operation:
    """Wait for the global operation called OPERATION (see wait_global_operation)."""
    pending = compute_v1.Operation(name=operation, status=compute_v1.Operation.Status.PENDING)
    return wait_global_operation(credentials, project, pending, what=what, timeout=timeout)


def get_firewall_rule(credentials: Credentials, project: str, name: str) -> FirewallRule | None:
    """The rule NAME, or None when it does not exist."""
    client = compute_client(compute_v1.FirewallsClient, credentials)
    try:
        return _firewall_rule(client.get(project=project, firewall=name, timeout=CALL_TIMEOUT))
    except api_exceptions.NotFound:
        return None


def delete_firewall_rule(
    credentials: Credentials,
    project: str,
    name: str,
    *,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    attempts: int | None = None,
) -> bool:
    """Delete the rule NAME and wait until it is gone.

    Returns True when this call deleted it, False when it did not exist (also success: the
    state wanted is "no such rule"). Transient answers (5xx, 429, rate limits, and
    resourceNotReady while the rule's own create is still running) are retried with one
    requestId, up to ATTEMPTS calls.
    """
    client = compute_client(compute_v1.FirewallsClient, credentials)
    request = compute_v1.DeleteFirewallRequest(
        project=project, firewall=name, request_id=new_request_id()
    )
    try:
        op = retry_transient(
            f"delete firewall rule {name}",
            lambda: client.delete_unary(request=request, timeout=CALL_TIMEOUT),
            attempts,
        )
        wait_global_operation(
            credentials, project, op, what=f"delete firewall rule {name}", timeout=timeout
        )
    except api_exceptions.NotFound:
        return False
    except OperationError as exc:
        if exc.http_status == 404 or "RESOURCE_NOT_FOUND" in exc.codes:
            return False
        raise
    return True


def list_all_firewall_rules(credentials: Credentials, project: str) -> list[FirewallRule]:
    """Every firewall rule of the project, across every page."""
    client = compute_client(compute_v1.FirewallsClient, credentials)
    request = compute_v1.ListFirewallsRequest(project=project)
    return [
        _firewall_rule(r)
        for r in retry_transient(
            "list firewall rules", lambda: list(client.list(request=request, timeout=CALL_TIMEOUT))
        )
    ]


def list_firewall_rules(
    credentials: Credentials, project: str, *, name_prefix: str
) -> list[FirewallRule]:
    """All rules whose name starts with NAME_PREFIX (letters, digits and hyphens only), with
    their creation timestamps, across every page."""
    if not name_prefix or not all(c.isalnum() or c == "-" for c in name_prefix):
        raise ValueError(f"firewall name prefix {name_prefix!r} must be letters, digits, hyphens")
    client = compute_client(compute_v1.FirewallsClient, credentials)
    request = compute_v1.ListFirewallsRequest(project=project, filter=f'name eq "{name_prefix}.*"')
    return [
        _firewall_rule(r)
        for r in client.list(request=request, timeout=CALL_TIMEOUT)
        if r.name.startswith(name_prefix)
    ]
