"""OS Login: import, list (login profile) and delete of SSH public keys."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from tests.fakes.gcp.state import FakeCore
from tests.fakes.gcp.wire import ApiError, RecordedRequest


class OsLoginApi(FakeCore):
    """`/oslogin/v1/users/...`: keys per user, a POSIX account for the project."""

    def _oslogin_profile_body(self, user: str) -> dict[str, Any]:
        local = re.sub(r"[^a-z0-9]", "_", user.split("@")[0].lower())
        username = f"sa_{local}" if user.endswith(".gserviceaccount.com") else local
        keys = self.state.oslogin_keys.get(user, {})
        return {
            "name": user,
            "posixAccounts": [
                {
                    "primary": True,
                    "username": username,
                    "uid": "2000",
                    "gid": "2000",
                    "homeDirectory": f"/home/{username}",
                    "operatingSystemType": "LINUX",
                    "accountId": self.state.project,
                    "name": f"users/{user}/projects/{self.state.project}",
                }
            ],
            "sshPublicKeys": {fp: dict(record) for fp, record in keys.items()},
        }

    def _oslogin_import(self, request: RecordedRequest, user: str) -> tuple[int, dict[str, Any]]:
        body = request.json() or {}
        key = body.get("key", "")
        parts = key.split()
        if len(parts) < 2:
            raise ApiError(400, "invalid", "Invalid SSH key.")
        fingerprint = hashlib.sha256(base64.b64decode(parts[1])).hexdigest()
        record = {
            "key": key,
            "fingerprint": fingerprint,
            "name": f"users/{user}/sshPublicKeys/{fingerprint}",
        }
        if body.get("expirationTimeUsec"):
            record["expirationTimeUsec"] = str(body["expirationTimeUsec"])
        self.state.oslogin_keys.setdefault(user, {})[fingerprint] = record
        self._notify("oslogin")
        return 200, {"loginProfile": self._oslogin_profile_body(user)}

    def _oslogin_delete(
        self, request: RecordedRequest, user: str, fp: str
    ) -> tuple[int, dict[str, Any]]:
        keys = self.state.oslogin_keys.get(user, {})
        if fp not in keys:
            raise ApiError(404, "notFound", f"Requested entity was not found: {fp}")
        del keys[fp]
        self._notify("oslogin")
        return 200, {}

    def _oslogin_profile(self, request: RecordedRequest, user: str) -> tuple[int, dict[str, Any]]:
        return 200, self._oslogin_profile_body(user)
