"""instances.getGuestAttributes: what the guest agent publishes about the instance, here only the
`hostkeys/` namespace (the SSH host keys `gcloud compute ssh` pins).

`guest_host_keys` is None while guest attributes are off: the real API then answers 404 for the
query path. Set it (under the lock) to {algorithm: base64 blob} to publish keys; {} publishes
nothing yet (an empty `queryValue`, as right after boot).
"""

from __future__ import annotations

from typing import Any

from tests.fakes.gcp.state import FakeCore, FakeInstance
from tests.fakes.gcp.wire import GOOGLE_LINK_BASE, ApiError, RecordedRequest


class GuestAttributesApi(FakeCore):
    """The guest attributes of the fake's one instance."""

    guest_host_keys: dict[str, str] | None = None

    def publish_host_keys(self, keys: dict[str, str] | None) -> None:
        """Publish KEYS (algorithm -> blob) as the guest agent would; None turns them off."""
        with self.lock:
            self.guest_host_keys = None if keys is None else dict(keys)

    def _instances_guest_attributes(
        self, request: RecordedRequest, project: str, zone: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        inst: FakeInstance = self._instance(project, zone, name)  # type: ignore[attr-defined]
        query_path = (request.query.get("queryPath") or [""])[0]
        variable_key = (request.query.get("variableKey") or [""])[0]
        link = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}/instances/{inst.name}"
        if self.guest_host_keys is None:
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
                for k, v in sorted(self.guest_host_keys.items())
                if namespace == "hostkeys"
            ]
            reply["queryValue"] = {"items": items} if items else {}
        elif variable_key.startswith("hostkeys/"):
            key = variable_key.removeprefix("hostkeys/")
            if key not in self.guest_host_keys:
                raise ApiError(404, "notFound", f"The resource '{link}/{variable_key}' not found")
            reply["variableKey"] = variable_key
            reply["variableValue"] = self.guest_host_keys[key]
        else:
            raise ApiError(400, "invalid", "queryPath or variableKey is required")
        return 200, reply
