"""projects.get: the project resource, here for its `commonInstanceMetadata` (where a project
turns OS Login on for every instance with `enable-oslogin`).

Tests change it with `set_project_metadata(key, value)`; each change gets a new fingerprint,
as the real API gives one.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from tests.fakes.gcp.state import FakeCore
from tests.fakes.gcp.wire import GOOGLE_LINK_BASE, RecordedRequest


class ProjectApi(FakeCore):
    """The fake's one project: its common instance metadata."""

    project_metadata: dict[str, str] | None = None
    project_metadata_fingerprint: str = "cHJvamVjdA=="

    def set_project_metadata(self, key: str, value: str | None) -> None:
        """Set (or, with None, remove) one commonInstanceMetadata item as someone else would."""
        with self.lock:
            items = dict(self.project_metadata or {})
            if value is None:
                items.pop(key, None)
            else:
                items[key] = value
            self.project_metadata = items
            self.project_metadata_fingerprint = base64.b64encode(secrets.token_bytes(8)).decode()

    def _projects_get(self, request: RecordedRequest, project: str) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        metadata: dict[str, Any] = {
            "kind": "compute#metadata",
            "fingerprint": self.project_metadata_fingerprint,
        }
        if self.project_metadata:
            metadata["items"] = [{"key": k, "value": v} for k, v in self.project_metadata.items()]
        return 200, {
            "kind": "compute#project",
            "id": self.state.project_number,
            "name": self.state.project,
            "commonInstanceMetadata": metadata,
            "selfLink": f"{GOOGLE_LINK_BASE}projects/{self.state.project}",
            "defaultServiceAccount": (
                f"{self.state.project_number}-compute@developer.gserviceaccount.com"
            ),
            "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS",
        }
