"""Compute Engine REST: firewalls insert/get/delete/list and instances get/setMetadata, with
the test controls that change the same state the way someone else would."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.fakes.gcp.operations import OperationsApi
from tests.fakes.gcp.state import FakeInstance
from tests.fakes.gcp.wire import GOOGLE_LINK_BASE, ApiError, RecordedRequest, rfc3339

FIREWALL_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


class ComputeApi(OperationsApi):
    """Firewalls and the instances; mutations go through operations."""

    # -- test controls -------------------------------------------------------------------------

    def add_firewall(
        self,
        name: str,
        *,
        created: datetime | None = None,
        source_ranges: list[str] | None = None,
        target_tags: list[str] | None = None,
        description: str = "",
        priority: int = 1000,
    ) -> dict[str, Any]:
        """Put a firewall rule straight into the state (for example an old leftover)."""
        created = created or datetime.now(timezone.utc)
        body = {
            "name": name,
            "network": "global/networks/default",
            "direction": "INGRESS",
            "sourceRanges": source_ranges or ["192.0.2.1/32"],
            "targetTags": ["ai-server"] if target_tags is None else target_tags,
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
            "description": description,
            "priority": priority,
        }
        with self.lock:
            resource = self._firewall_resource(self.state.project, body, created)
            self.state.firewalls[name] = resource
        self._notify("firewalls")
        return resource

    def set_metadata(self, key: str, value: str | None, instance: str | None = None) -> None:
        """Change one metadata item of INSTANCE (by name; default the primary one) as someone
        else would (new fingerprint)."""
        with self.lock:
            inst = self.state.instance_named(instance)
            if value is None:
                inst.metadata.pop(key, None)
            else:
                inst.metadata[key] = value
            inst.new_fingerprint()
        self._notify("metadata")

    # -- firewalls -----------------------------------------------------------------------------

    def _firewall_resource(
        self, project: str, body: dict[str, Any], created: datetime
    ) -> dict[str, Any]:
        network = body.get("network") or "global/networks/default"
        if not network.startswith("https://"):
            if network.startswith("global/"):
                network = f"projects/{project}/{network}"
            elif "/" not in network:
                network = f"projects/{project}/global/networks/{network}"
            network = GOOGLE_LINK_BASE + network
        resource = {
            "kind": "compute#firewall",
            "id": str(next(self._ids)),
            "creationTimestamp": rfc3339(created.astimezone(timezone(timedelta(hours=-7)))),
            "name": body["name"],
            "description": body.get("description", ""),
            "network": network,
            "priority": body.get("priority", 1000),
            "sourceRanges": list(body.get("sourceRanges", [])),
            "targetTags": list(body.get("targetTags", [])),
            "allowed": body.get("allowed", []),
            "direction": body.get("direction", "INGRESS"),
            "logConfig": {"enable": False},
            "disabled": bool(body.get("disabled", False)),
            "selfLink": f"{GOOGLE_LINK_BASE}projects/{project}/global/firewalls/{body['name']}",
        }
        return {k: v for k, v in resource.items() if v != "" or k != "description"}

    def _firewalls_insert(
        self, request: RecordedRequest, project: str
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        body = request.json() or {}
        name = body.get("name", "")
        if not FIREWALL_NAME_RE.fullmatch(name):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'",
            )
        for cidr in body.get("sourceRanges", []):
            if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", cidr):
                raise ApiError(
                    400, "invalid", f"Invalid value for field 'resource.sourceRanges[0]': '{cidr}'."
                )
        if not body.get("allowed") and not body.get("denied"):
            raise ApiError(400, "invalid", "Required field 'resource.allowed' not specified")
        if name in self.state.firewalls or self.operation_in_flight(
            f"/global/firewalls/{name}", "insert"
        ):
            raise ApiError(
                409,
                "alreadyExists",
                f"The resource 'projects/{project}/global/firewalls/{name}' already exists",
            )
        resource = self._firewall_resource(project, body, datetime.now(timezone.utc))

        def effect() -> None:
            self.state.firewalls[name] = resource
            self._notify("firewalls")

        return 200, self._start_operation(
            request,
            project=project,
            operation_type="insert",
            target_link=resource["selfLink"],
            effect=effect,
        )

    def _firewalls_get(
        self, request: RecordedRequest, project: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        if name not in self.state.firewalls:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/global/firewalls/{name}' was not found",
            )
        return 200, dict(self.state.firewalls[name])

    def _firewalls_delete(
        self, request: RecordedRequest, project: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        if self.operation_in_flight(f"/global/firewalls/{name}"):
            raise ApiError(
                400,
                "resourceNotReady",
                f"The resource 'projects/{project}/global/firewalls/{name}' is not ready",
            )
        _, resource = self._firewalls_get(request, project, name)

        def effect() -> None:
            self.state.firewalls.pop(name, None)
            self._notify("firewalls")

        return 200, self._start_operation(
            request,
            project=project,
            operation_type="delete",
            target_link=resource["selfLink"],
            effect=effect,
        )

    def _firewalls_list(self, request: RecordedRequest, project: str) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        items = sorted(self.state.firewalls.values(), key=lambda r: r["name"])
        filter_expr = (request.query.get("filter") or [""])[0]
        if filter_expr:
            items = [r for r in items if _filter_matches(filter_expr, r)]
        max_results = int((request.query.get("maxResults") or ["500"])[0])
        page_size = min(max_results, self.state.firewall_page_size)
        start = int((request.query.get("pageToken") or ["0"])[0])
        page = items[start : start + page_size]
        reply: dict[str, Any] = {
            "kind": "compute#firewallList",
            "id": f"projects/{project}/global/firewalls",
            "selfLink": f"{GOOGLE_LINK_BASE}projects/{project}/global/firewalls",
        }
        if page:
            reply["items"] = page
        if start + page_size < len(items):
            reply["nextPageToken"] = str(start + page_size)
        return 200, reply

    # -- instances -----------------------------------------------------------------------------

    def _instance(self, project: str, zone: str, name: str) -> FakeInstance:
        self._check_project(project)
        inst = next(
            (i for i in self.state.all_instances() if (i.zone, i.name) == (zone, name)), None
        )
        if inst is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
            )
        return inst

    def _instances_get(
        self, request: RecordedRequest, project: str, zone: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        return 200, instance_resource(project, self._instance(project, zone, name))

    def _instances_set_metadata(
        self, request: RecordedRequest, project: str, zone: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        inst = self._instance(project, zone, name)
        body = request.json() or {}
        if body.get("fingerprint") != inst.fingerprint:
            raise ApiError(
                412,
                "conditionNotMet",
                "Supplied fingerprint does not match current metadata fingerprint.",
            )
        items = {item["key"]: item.get("value", "") for item in body.get("items", [])}
        inst.new_fingerprint()

        def effect() -> None:
            inst.metadata = items
            self._notify("metadata")

        return 200, self._start_operation(
            request,
            project=project,
            operation_type="setMetadata",
            target_link=f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}/instances/{name}",
            effect=effect,
            zone=zone,
        )


def instance_resource(project: str, inst: FakeInstance) -> dict[str, Any]:
    """INST as instances.get (and the lists) return it."""
    zone_link = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{inst.zone}"
    interface: dict[str, Any] = {
        "kind": "compute#networkInterface",
        "name": "nic0",
        "network": f"{GOOGLE_LINK_BASE}projects/{project}/global/networks/{inst.network}",
        "networkIP": inst.internal_ip,
        "stackType": "IPV4_ONLY",
    }
    if inst.nat_ip is not None:
        interface["accessConfigs"] = [
            {
                "kind": "compute#accessConfig",
                "type": "ONE_TO_ONE_NAT",
                "name": "External NAT",
                "natIP": inst.nat_ip,
                "networkTier": "PREMIUM",
            }
        ]
    metadata: dict[str, Any] = {"kind": "compute#metadata", "fingerprint": inst.fingerprint}
    if inst.metadata:
        metadata["items"] = [{"key": k, "value": v} for k, v in inst.metadata.items()]
    tags: dict[str, Any] = {"fingerprint": "42WmSpB8rSM="}
    if inst.tags:
        tags["items"] = list(inst.tags)
    resource: dict[str, Any] = {
        "kind": "compute#instance",
        "id": str(4567890123456789012 + sum(map(ord, inst.zone + inst.name))),
        "creationTimestamp": "2024-03-01T09:00:00.000-08:00",
        "name": inst.name,
        "tags": tags,
        "machineType": f"{zone_link}/machineTypes/g2-standard-4",
        "status": inst.status,
        "zone": zone_link,
        "networkInterfaces": [interface],
        "metadata": metadata,
        "labelFingerprint": "42WmSpB8rSM=",
        "selfLink": f"{zone_link}/instances/{inst.name}",
    }
    if inst.labels:
        resource["labels"] = dict(inst.labels)
    return resource


def _filter_matches(expression: str, resource: dict[str, Any]) -> bool:
    """Compute's list filter for one `FIELD eq|ne "REGEX"` term (RE2 full match)."""
    match = re.fullmatch(r"\s*(\w+)\s+(eq|ne)\s+(?:\"(.*)\"|'(.*)'|(\S+))\s*", expression)
    if not match:
        raise ApiError(400, "invalid", f"Invalid value for field 'filter': '{expression}'.")
    field_name, op, *values = match.groups()
    pattern = next(v for v in values if v is not None)
    hit = re.fullmatch(pattern, str(resource.get(field_name, ""))) is not None
    return hit if op == "eq" else not hit
