"""instances.getGuestAttributes: what the guest agent publishes about the instance, here only the
`hostkeys/` namespace (the SSH host keys `gcloud compute ssh` pins).

`guest_host_keys` is None while guest attributes are off: the real API then answers 404 for the
query path. Set it (under the lock) to {algorithm: base64 blob} to publish keys; {} publishes
nothing yet (an empty `queryValue`, as right after boot). These fake-wide keys are every
instance's, unless an instance publishes its own (`FakeInstance.guest_host_keys`, set with
`publish_host_keys(keys, instance=NAME)`), as each VM of a fleet does.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.gcp.state import FakeCore, FakeInstance
from tests.fakes.gcp.wire import GOOGLE_LINK_BASE, ApiError, RecordedRequest


class GuestAttributesApi(FakeCore):
    """The guest attributes of the fake's instances."""

    guest_host_keys: dict[str, str] | None = None

    def publish_host_keys(self, keys: dict[str, str] | None, instance: str | None = None) -> None:
        """Publish KEYS (algorithm -> blob) as the guest agent would; None turns them off.
        With INSTANCE: that instance's own keys (None: it falls back to the fake-wide ones)."""
        with self.lock:
            value = None if keys is None else dict(keys)
            if instance is None:
                self.guest_host_keys = value
            else:
                self.state.instance_named(instance).guest_host_keys = value

    def _instances_guest_attributes(
        self, request: RecordedRequest, project: str, zone: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        inst: FakeInstance = self._instance(project, zone, name)  # type: ignore[attr-defined]
        query_path = (request.query.get("queryPath") or [""])[0]
        variable_key = (request.query.get("variableKey") or [""])[0]
        link = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}/instances/{inst.name}"
        published = self.guest_host_keys if inst.guest_host_keys is None else inst.guest_host_keys
        if published is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource '{link}/guestAttributes/{query_path or variable_key}' was not found",
            )
        reply: dict[str, Any] = {
            "kind": "compute#guestAttributes",
            "selfLink": f"{link}/getGuestAttributes",
        }
        if query_path:
            reply["queryPath"] = query_path
            namespace = query_path.rstrip("/")
            items = [
                {"namespace": "hostkeys", "key": k, "value": v}
                for k, v in sorted(published.items())
                if namespace == "hostkeys"
            ]
            reply["queryValue"] = {"items": items} if items else {}
        elif variable_key.startswith("hostkeys/"):
            key = variable_key.removeprefix("hostkeys/")
            if key not in published:
                raise ApiError(404, "notFound", f"The resource '{link}/{variable_key}' not found")
            reply["variableKey"] = variable_key
            reply["variableValue"] = published[key]
        else:
            raise ApiError(400, "invalid", "queryPath or variableKey is required")
        return 200, reply
