"""IAM Credentials: `serviceAccounts/SA:generateAccessToken` (service account impersonation)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.fakes.gcp.state import FakeCore
from tests.fakes.gcp.wire import CLOUD_PLATFORM_SCOPE, IAM_SCOPE, ApiError, RecordedRequest


class IamApi(FakeCore):
    """`/iam/v1/projects/-/serviceAccounts/SA:generateAccessToken`."""

    def _iam_generate_access_token(
        self, request: RecordedRequest, sa: str
    ) -> tuple[int, dict[str, Any]]:
        header = request.authorization or ""
        grant = self.state.tokens.get(header.removeprefix("Bearer "))
        if grant is None or not grant["scopes"] & {IAM_SCOPE, CLOUD_PLATFORM_SCOPE}:
            raise ApiError(401, "authError", "Request had invalid authentication credentials.")
        if sa != self.state.service_account:
            raise ApiError(
                403,
                "forbidden",
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
                "(or it may not exist).",
            )
        body = request.json() or {}
        scopes = tuple(body.get("scope") or ())
        token = "ya29.impersonated-" + secrets.token_urlsafe(16)
        self.state.tokens[token] = {"scopes": set(scopes), "who": sa}
        expire = datetime.now(timezone.utc) + timedelta(hours=1)
        return 200, {"accessToken": token, "expireTime": expire.strftime("%Y-%m-%dT%H:%M:%SZ")}
