"""OS Login for the per-run key: whether the instance or its project turns OS Login on (then
the guest ignores `ssh-keys` metadata), importing the public key (with an expiry) into the OS
Login profile of the account the deploy runs as, finding it again, and deleting it. The API
base URL is the real one unless AI_DEPLOY_OSLOGIN_ENDPOINT is set (tests point it at a
loopback server)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1

from ai_deploy.gcp import compute
from ai_deploy.gcp.operations import CALL_TIMEOUT, compute_client, retry_transient
from ai_deploy.gcp.sshsettings import SSH_MODE_ENV, SshKeyError, SshSettings

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
    """One OS Login call; rate limits, 429 and 5xx are retried with backoff (importing the
    same key again, or deleting it again, is harmless)."""
    return retry_transient(
        f"OS Login {method} {path.split('/')[0]}",
        lambda: _oslogin_once(credentials, method, path, **kwargs),
    )


def _oslogin_once(
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


ENABLE_OSLOGIN_KEY = "enable-oslogin"
_TRUE = ("true", "1", "yes", "y", "on")


@dataclass(frozen=True)
class OsLoginState:
    """Whether OS Login is on for an instance, and which metadata said so.

    + enabled: the guest takes keys from OS Login and ignores `ssh-keys` metadata
    + source: "instance metadata", "project metadata (commonInstanceMetadata)", or "" when
      neither sets enable-oslogin (an organisation policy can still require OS Login)
    + value: the enable-oslogin value that decided it
    """

    enabled: bool
    source: str = ""
    value: str = ""


def get_project_metadata(credentials: Credentials, project: str) -> dict[str, str]:
    """The project's commonInstanceMetadata items (projects.get)."""
    client = compute_client(compute_v1.ProjectsClient, credentials)
    resource = client.get(project=project, timeout=CALL_TIMEOUT)
    return {item.key: item.value for item in resource.common_instance_metadata.items}


def oslogin_state(credentials: Credentials, project: str, zone: str, instance: str) -> OsLoginState:
    """OS Login as the guest will see it: the instance's enable-oslogin when it has one (it
    overrides the project's, TRUE or FALSE), else the project's commonInstanceMetadata
    enable-oslogin. TRUE (any case, or 1/yes/on) is on. API errors propagate."""
    info = compute.get_instance(credentials, project, zone, instance)
    value = info.metadata.get(ENABLE_OSLOGIN_KEY)
    if value is not None and value.strip():
        return OsLoginState(value.strip().lower() in _TRUE, "instance metadata", value.strip())
    value = get_project_metadata(credentials, project).get(ENABLE_OSLOGIN_KEY)
    if value is not None and value.strip():
        source = "project metadata (commonInstanceMetadata)"
        return OsLoginState(value.strip().lower() in _TRUE, source, value.strip())
    return OsLoginState(False)


def ssh_settings_for(
    credentials: Credentials,
    project: str,
    zone: str,
    instance: str,
    settings: SshSettings,
    *,
    mode_chosen: bool,
) -> tuple[SshSettings, str | None]:
    """SETTINGS fitted to the instance's OS Login, and a line for the log (or None).

    Only the metadata mode depends on it: when OS Login is on, a chosen mode (MODE_CHOSEN:
    AI_DEPLOY_SSH_MODE was set) raises SshKeyError naming the setting, and the default becomes
    OS Login, said in the line returned, instead of an ssh-keys entry the guest would ignore
    while the deploy waits for SSH. Metadata that cannot be read (a role without
    compute.projects.get) leaves SETTINGS unchanged and says so.
    """
    if settings.mode != "metadata":
        return settings, None
    try:
        state = oslogin_state(credentials, project, zone, instance)
    except api_exceptions.GoogleAPICallError as exc:
        return settings, (
            f"could not tell whether OS Login is on ({exc.message}); using ssh-keys metadata "
            f"(set {SSH_MODE_ENV}=oslogin if the instance or project enables OS Login)"
        )
    if not state.enabled:
        return settings, None
    where = f"{state.source} of {instance if state.source.startswith('instance') else project}"
    if mode_chosen:
        raise SshKeyError(
            f"OS Login is on ({ENABLE_OSLOGIN_KEY}={state.value} in the {where}), so the guest "
            f"ignores ssh-keys metadata and {SSH_MODE_ENV}=metadata cannot work: set "
            f"{SSH_MODE_ENV}=oslogin (the account needs roles/compute.osAdminLogin), or turn "
            "OS Login off for the instance"
        )
    return dataclasses.replace(settings, mode="oslogin"), (
        f"OS Login is on ({ENABLE_OSLOGIN_KEY}={state.value} in the {where}): the key goes "
        f"to the OS Login profile instead of ssh-keys metadata (set {SSH_MODE_ENV} to choose)"
    )


__all__ = [
    "DEFAULT_OSLOGIN_ENDPOINT",
    "ENABLE_OSLOGIN_KEY",
    "OSLOGIN_ENDPOINT_ENV",
    "OsLoginState",
    "find_oslogin_fingerprint",
    "get_project_metadata",
    "grant_oslogin",
    "oslogin_endpoint",
    "oslogin_state",
    "revoke_oslogin",
    "ssh_settings_for",
]
