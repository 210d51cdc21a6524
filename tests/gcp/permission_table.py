"""The IAM permission Compute checks for each REST call the fake records (as documented per
method), so tests can compare what a run used with the roles the README gives."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from tests.fakes.gcp import RecordedRequest

_TABLE: list[tuple[str, str, set[str]]] = [
    ("POST", r"/global/firewalls$", {"compute.firewalls.create", "compute.networks.updatePolicy"}),
    ("GET", r"/global/firewalls$", {"compute.firewalls.list"}),
    ("GET", r"/global/firewalls/[^/]+$", {"compute.firewalls.get"}),
    ("DELETE", r"/global/firewalls/[^/]+$", {"compute.firewalls.delete"}),
    ("GET", r"/global/operations/[^/]+$", {"compute.globalOperations.get"}),
    ("POST", r"/global/operations/[^/]+/wait$", {"compute.globalOperations.get"}),
    ("GET", r"/zones/[^/]+/operations/[^/]+$", {"compute.zoneOperations.get"}),
    ("POST", r"/zones/[^/]+/operations/[^/]+/wait$", {"compute.zoneOperations.get"}),
    ("GET", r"/zones/[^/]+/instances/[^/]+$", {"compute.instances.get"}),
    (
        "GET",
        r"/zones/[^/]+/instances/[^/]+/getGuestAttributes$",
        {"compute.instances.getGuestAttributes"},
    ),
    ("POST", r"/zones/[^/]+/instances/[^/]+/setMetadata$", {"compute.instances.setMetadata"}),
    ("GET", r"^/compute/v1/projects/[^/]+$", {"compute.projects.get"}),
]


def permissions_for(request: RecordedRequest) -> set[str]:
    for method, pattern, permissions in _TABLE:
        if method == request.method and re.search(pattern, request.path):
            return permissions
    pytest.fail(
        f"no permission known for {request.method} {request.path}: add it to the role and the "
        "README"
    )


def compute_permissions(requests: Iterable[RecordedRequest]) -> set[str]:
    """Every permission the Compute calls among REQUESTS needed."""
    used: set[str] = set()
    for request in requests:
        if request.path.startswith("/compute/"):
            used |= permissions_for(request)
    return used
