"""OS Login for the per-run key: import the public key (with an expiry) into the OS Login
profile of the account the deploy runs as, find it again, and delete it. The API base URL is
the real one unless AI_DEPLOY_OSLOGIN_ENDPOINT is set (tests point it at a loopback server)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials

from ai_deploy.gcp.sshsettings import SshKeyError

OSLOGIN_ENDPOINT_ENV = "AI_DEPLOY_OSLOGIN_ENDPOINT"
DEFAULT_OSLOGIN_ENDPOINT = "https://oslogin.googleapis.com"
_HTTP_TIMEOUT = 60.0


def oslogin_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The OS Login API base URL: AI_DEPLOY_OSLOGIN_ENDPOINT, else the real one."""
    env = os.environ if environ is None else environ
    return (env.get(OSLOGIN_ENDPOINT_ENV) or DEFAULT_OSLOGIN_ENDPOINT).strip().rstrip("/")


def _oslogin_call(
    credentials: Credentials, method: str, path: str, **kwargs: Any
) -> dict[str, Any]:
    from google.auth.transport.requests import AuthorizedSession

    session = AuthorizedSession(credentials)
    try:
        response = session.request(
            method, f"{oslogin_endpoint()}/v1/{path}", timeout=_HTTP_TIMEOUT, **kwargs
        )
    finally:
        session.close()
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = {}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise api_exceptions.from_http_status(
            response.status_code,
            error.get("message") or response.text[:300],
            errors=error.get("errors", []),
            response=response,
        )
    return body if isinstance(body, dict) else {}


def grant_oslogin(
    credentials: Credentials,
    project: str,
    email: str,
    public_key: str,
    expires_at: datetime,
) -> tuple[str, str]:
    """Import PUBLIC_KEY into EMAIL's OS Login profile; returns (posix username, fingerprint)."""
    usec = int(expires_at.timestamp() * 1_000_000)
    try:
        body = _oslogin_call(
            credentials,
            "POST",
            f"users/{email}:importSshPublicKey",
            params={"projectId": project},
            json={"key": public_key, "expirationTimeUsec": str(usec)},
        )
    except api_exceptions.GoogleAPICallError as exc:
        raise SshKeyError(
            f"OS Login refused to import the key for {email} ({exc.message}): the account "
            "needs roles/compute.osAdminLogin (or osLogin) on the project, and the OS Login "
            "API must be enabled"
        ) from exc
    profile = body.get("loginProfile") or {}
    blob = public_key.split()[1]
    fingerprint = next(
        (
            fp
            for fp, record in (profile.get("sshPublicKeys") or {}).items()
            if blob in str(record.get("key", "")).split()
        ),
        None,
    )
    accounts = profile.get("posixAccounts") or []
    account = next((a for a in accounts if a.get("accountId") == project), None) or next(
        (a for a in accounts if a.get("primary")), None
    )
    if fingerprint is None or account is None or not account.get("username"):
        raise SshKeyError(
            f"OS Login profile of {email} has no POSIX account for project {project} or lacks "
            "the imported key: check that OS Login is enabled for the project"
        )
    return str(account["username"]), fingerprint


def find_oslogin_fingerprint(credentials: Credentials, email: str, blob: str) -> str | None:
    """The fingerprint OS Login gave the key with BLOB, or None when the profile lacks it."""
    profile = _oslogin_call(credentials, "GET", f"users/{email}/loginProfile")
    for fingerprint, record in (profile.get("sshPublicKeys") or {}).items():
        if blob in str(record.get("key", "")).split():
            return str(fingerprint)
    return None


def revoke_oslogin(credentials: Credentials, email: str, fingerprint: str) -> None:
    try:
        _oslogin_call(credentials, "DELETE", f"users/{email}/sshPublicKeys/{fingerprint}")
    except api_exceptions.NotFound:
        return


__all__ = [
    "DEFAULT_OSLOGIN_ENDPOINT",
    "OSLOGIN_ENDPOINT_ENV",
    "find_oslogin_fingerprint",
    "grant_oslogin",
    "oslogin_endpoint",
    "revoke_oslogin",
]
