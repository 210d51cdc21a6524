"""The workload identity chain up to a federated token: the GitHub Actions OIDC token URL
(checks the bearer request token) and the Security Token Service token exchange, with the
environment and credential file google-github-actions/auth would leave pointed at the fake."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import quote

from tests.fakes.gcp.state import FakeCore
from tests.fakes.gcp.wire import (
    ACCESS_TOKEN_TYPE,
    CLOUD_PLATFORM_SCOPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    ApiError,
    RecordedRequest,
    b64url,
)


class StsApi(FakeCore):
    """GitHub's OIDC token URL and STS `/sts/v1/token`."""

    # -- test controls -------------------------------------------------------------------------

    def github_oidc_url(self) -> str:
        """What ACTIONS_ID_TOKEN_REQUEST_URL looks like on a runner (already has a query)."""
        return f"{self.url}/github/oidc?api-version=2.0"

    def github_env(self) -> dict[str, str]:
        """The variables a GitHub job with `id-token: write` has."""
        return {
            "ACTIONS_ID_TOKEN_REQUEST_URL": self.github_oidc_url(),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": self.state.github_request_token,
        }

    def github_api_env(self) -> dict[str, str]:
        """What a job step sees for GitHub's REST API (GITHUB_TOKEN passed by the workflow)."""
        return {
            "GITHUB_API_URL": f"{self.url}/github/api",
            "GITHUB_REPOSITORY": self.state.github_repository,
            "GITHUB_TOKEN": self.state.github_token,
        }

    def external_account_info(
        self,
        *,
        service_account: str | None,
        request_token: str | None = None,
        audience: str | None = None,
    ) -> dict[str, Any]:
        """The `external_account` JSON google-github-actions/auth writes, pointed at this
        server: token_url, the impersonation URL (when SERVICE_ACCOUNT) and the OIDC URL."""
        audience = audience or self.state.audience
        oidc_audience = "https://iam.googleapis.com/" + audience.removeprefix(
            "//iam.googleapis.com/"
        )
        info: dict[str, Any] = {
            "type": "external_account",
            "audience": audience,
            "subject_token_type": JWT_TOKEN_TYPE,
            "token_url": f"{self.url}/sts/v1/token",
            "credential_source": {
                "url": f"{self.github_oidc_url()}&audience={quote(oidc_audience, safe='')}",
                "headers": {
                    "Authorization": f"Bearer {request_token or self.state.github_request_token}"
                },
                "format": {"type": "json", "subject_token_field_name": "value"},
            },
        }
        if service_account:
            info["service_account_impersonation_url"] = (
                f"{self.url}/iam/v1/projects/-/serviceAccounts/"
                f"{service_account}:generateAccessToken"
            )
        return info

    # -- endpoints -----------------------------------------------------------------------------

    def _github_run(
        self, request: RecordedRequest, repo: str, run: str
    ) -> tuple[int, dict[str, Any]]:
        """GET /repos/{owner}/{repo}/actions/runs/{run_id}: 401 without the token, 404 for a
        run or repository it does not know, else the run with its `status`."""
        if request.authorization != f"Bearer {self.state.github_token}":
            return 401, {"message": "Bad credentials"}
        status = self.state.github_runs.get(run)
        if repo != self.state.github_repository or status is None:
            return 404, {"message": "Not Found"}
        return 200, {"id": int(run), "status": status, "conclusion": None}

    def _github_oidc(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        if request.authorization != f"Bearer {self.state.github_request_token}":
            # GitHub answers a bad runtime token with a bare 401 and a short message.
            return 401, {"message": "Bad credentials"}
        audience = (request.query.get("audience") or [""])[0]
        claims = {
            "iss": "https://token.actions.githubusercontent.com",
            "aud": audience,
            "sub": "repo:dojangkok/ai-server:environment:1-bigbang",
            "repository": "dojangkok/ai-server",
            "exp": int(time.time()) + 300,
        }
        jwt = ".".join(
            [
                b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()),
                b64url(json.dumps(claims).encode()),
                b64url(secrets.token_bytes(32)),
            ]
        )
        self.state.oidc_tokens.add(jwt)
        return 200, {"count": 1, "value": jwt}

    def _sts_token(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        form = request.form()
        if form.get("grant_type") != TOKEN_EXCHANGE_GRANT:
            raise ApiError(400, "unsupported_grant_type", "Unsupported grant type", oauth=True)
        if form.get("audience") != self.state.audience:
            raise ApiError(
                400,
                "invalid_target",
                'The target service indicated by the "audience" parameters is invalid. This '
                "might either be because the pool or provider is disabled or deleted or because "
                "it doesn't exist.",
                oauth=True,
            )
        if form.get("subject_token") not in self.state.oidc_tokens:
            raise ApiError(
                400,
                "invalid_grant",
                "The audience in ID Token does not match the expected audience.",
                oauth=True,
            )
        scopes = tuple((form.get("scope") or CLOUD_PLATFORM_SCOPE).split())
        token = "ya29.sts-" + secrets.token_urlsafe(16)
        self.state.tokens[token] = {"scopes": set(scopes), "who": "principal://github"}
        return 200, {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": 3599,
        }
