"""The tokens the fake issues and accepts: the OAuth token endpoint (service-account JWT and
refresh-token grants), tokens handed out directly to tests, and the bearer check the Compute
and OS Login routes make (self-signed service-account JWTs included)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from tests.fakes.gcp.state import FakeCore
from tests.fakes.gcp.wire import (
    CLOUD_PLATFORM_SCOPE,
    JWT_BEARER_GRANT,
    ApiError,
    RecordedRequest,
)


class OAuthApi(FakeCore):
    """`/oauth2/token` and the bearer check."""

    # -- test controls -------------------------------------------------------------------------

    def issue_token(
        self, *, scopes: tuple[str, ...] = (CLOUD_PLATFORM_SCOPE,), who: str = ""
    ) -> str:
        """A fresh access token the fake accepts (for tests that need no token exchange)."""
        token = "ya29.fake-" + secrets.token_urlsafe(16)
        with self.lock:
            self.state.tokens[token] = {"scopes": set(scopes), "who": who or "static"}
        return token

    def issue_refresh_token(self) -> str:
        token = "1//fake-refresh-" + secrets.token_urlsafe(8)
        with self.lock:
            self.state.refresh_tokens.add(token)
        return token

    # -- endpoints -----------------------------------------------------------------------------

    def _check_bearer(self, request: RecordedRequest) -> None:
        header = request.authorization or ""
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        with self.lock:
            grant = self.state.tokens.get(token or "") or _self_signed_jwt_grant(token or "")
        if grant is None:
            raise ApiError(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        if CLOUD_PLATFORM_SCOPE not in grant["scopes"]:
            raise ApiError(
                403,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
            )

    def _oauth2_token(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        form = request.form()
        grant = form.get("grant_type")
        if grant == JWT_BEARER_GRANT:
            try:
                payload = form["assertion"].split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            except (KeyError, IndexError, ValueError) as exc:
                raise ApiError(400, "invalid_grant", "Invalid JWT.", oauth=True) from exc
            who = claims.get("iss", "")
            scopes = tuple(claims.get("scope", "").split())
        elif grant == "refresh_token":
            if form.get("refresh_token") not in self.state.refresh_tokens:
                raise ApiError(
                    400, "invalid_grant", "Token has been expired or revoked.", oauth=True
                )
            who = "user@example.com"
            scopes = tuple((form.get("scope") or CLOUD_PLATFORM_SCOPE).split())
        else:
            raise ApiError(400, "unsupported_grant_type", "Invalid grant_type", oauth=True)
        token = "ya29.oauth-" + secrets.token_urlsafe(16)
        self.state.tokens[token] = {"scopes": set(scopes), "who": who}
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}


def _self_signed_jwt_grant(token: str) -> dict[str, Any] | None:
    """Service-account credentials in Google's client libraries send a self-signed JWT
    instead of an access token; accept one issued by a service account (signature unchecked)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    issuer = claims.get("iss", "") if isinstance(claims, dict) else ""
    if not issuer.endswith(".gserviceaccount.com") or claims.get("exp", 0) < time.time():
        return None
    scopes = set(str(claims.get("scope", "")).split()) or {CLOUD_PLATFORM_SCOPE}
    return {"scopes": scopes, "who": issuer, "self_signed": True}


def self_signed_jwt_claims(authorization: str | None) -> dict[str, Any]:
    """The claims of a `Bearer <self-signed JWT>` header (for assertions in tests)."""
    token = (authorization or "").removeprefix("Bearer ")
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
