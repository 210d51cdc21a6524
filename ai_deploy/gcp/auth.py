"""Google credentials for a deploy, and the project they act on.

Where the credentials come from, in order:

1. an explicit credentials file (argument), else GOOGLE_APPLICATION_CREDENTIALS: the
   `external_account` file google-github-actions/auth writes for Workload Identity Federation
   (with or without service account impersonation), a service-account key file, or an
   `authorized_user` / `impersonated_service_account` file from gcloud;
2. gcloud's application-default file (`gcloud auth application-default login`), in
   $CLOUDSDK_CONFIG or ~/.config/gcloud.

The project is never guessed: it is the argument, else GCP_PROJECT_ID (the seed workflow's
secret), else GOOGLE_CLOUD_PROJECT (exported by google-github-actions/auth).
`google.auth.default()` is deliberately not used: without a project in its own variables it
asks Cloud Resource Manager for one, a call no setting here can redirect.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.auth.credentials import Credentials

from ai_deploy.gcp import GcpError

logger = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
PROJECT_ENV_VARS = ("GCP_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
CREDENTIALS_ENV_VAR = "GOOGLE_APPLICATION_CREDENTIALS"

# Project ids (6-30 chars, optionally domain-scoped) or project numbers.
_PROJECT_RE = re.compile(r"(?:[a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]|[0-9]{1,20}")
_IMPERSONATION_RE = re.compile(r"/serviceAccounts/([^/:]+):generateAccessToken$")

_HINT_WIF = (
    "check the WORKLOAD_IDENTITY_PROVIDER given to google-github-actions/auth "
    "(projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER: it must "
    "exist, be enabled, and its attribute condition must admit this repository)"
)
_HINT_OIDC = (
    "the job needs `permissions: id-token: write`, and google-github-actions/auth must run in "
    "the same job (ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are only "
    "valid there)"
)
_HINT_NO_CREDENTIALS = (
    "in CI, run google-github-actions/auth (workload_identity_provider + service_account) "
    "before ai-deploy, in a job with `permissions: id-token: write`; locally, set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file or run "
    "`gcloud auth application-default login`"
)


class GcpAuthError(GcpError):
    """Credentials could not be loaded or refreshed; the message names the setting to check."""


@dataclass(frozen=True)
class GcpSession:
    """Refreshed credentials, the project they act on, and where they came from.

    `principal` is the service account the calls run as when it is known (key file or
    impersonation), else None (a federated principal or a gcloud user).
    """

    credentials: Credentials
    project: str
    source: str
    principal: str | None = None


def resolve_project(project: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The project id: PROJECT, else GCP_PROJECT_ID, else GOOGLE_CLOUD_PROJECT.

    Guarantees a syntactically valid project id or number; raises GcpAuthError naming the
    variables to set otherwise. Never makes a network call.
    """
    env = os.environ if environ is None else environ
    origin = "the project argument"
    value = (project or "").strip()
    if not value:
        for name in PROJECT_ENV_VARS:
            value = env.get(name, "").strip()
            if value:
                origin = name
                break
    if not value:
        raise GcpAuthError(
            "no GCP project given: set GCP_PROJECT_ID (the project id, as in the "
            "GCP_PROJECT_ID secret) or pass the project explicitly"
        )
    if not _PROJECT_RE.fullmatch(value):
        raise GcpAuthError(
            f"{origin}={value!r} is not a GCP project id (6-30 lowercase letters, digits and "
            "hyphens, starting with a letter): check GCP_PROJECT_ID"
        )
    return value


def find_credentials_file(environ: Mapping[str, str] | None = None) -> tuple[Path, str] | None:
    """The credentials file to use and the setting it came from, or None when there is none.

    Raises GcpAuthError when GOOGLE_APPLICATION_CREDENTIALS names a file that does not exist.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(CREDENTIALS_ENV_VAR, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise GcpAuthError(
                f"{CREDENTIALS_ENV_VAR}={explicit} does not exist or is not a file: check the "
                "path (google-github-actions/auth writes it into the workspace; a later "
                "actions/checkout with `clean: true` deletes it)"
            )
        return path, CREDENTIALS_ENV_VAR
    config_dir = env.get("CLOUDSDK_CONFIG", "").strip()
    if config_dir:
        gcloud_dir = Path(config_dir).expanduser()
    elif os.name == "nt" and env.get("APPDATA"):
        gcloud_dir = Path(env["APPDATA"]) / "gcloud"
    else:
        gcloud_dir = Path(env.get("HOME", "~")).expanduser() / ".config" / "gcloud"
    adc = gcloud_dir / "application_default_credentials.json"
    if adc.is_file():
        return adc, f"gcloud application-default credentials ({adc})"
    return None


def load_credentials(
    project: str | None = None,
    *,
    credentials_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    refresh: bool = True,
    timeout: float = 30.0,
) -> GcpSession:
    """Load credentials for PROJECT (see `resolve_project`) and refresh them once.

    Guarantees that on return the credentials hold a valid access token (unless
    `refresh=False`), so a broken Workload Identity setup, a missing `id-token: write`, a
    wrong service account or a revoked key fails here, as a GcpAuthError that says which
    setting to check, not halfway through the deploy. Talks only to the token endpoints
    named in the credentials file.
    """
    env = os.environ if environ is None else environ
    resolved_project = resolve_project(project, env)
    if credentials_file is not None:
        path = Path(credentials_file).expanduser()
        origin = str(path)
        if not path.is_file():
            raise GcpAuthError(f"credentials file {path} does not exist: check the path")
    else:
        found = find_credentials_file(env)
        if found is None:
            raise GcpAuthError(f"no Google credentials found: {_HINT_NO_CREDENTIALS}")
        path, origin = found
    info = _read_json(path, origin)
    credentials, kind, principal = _credentials_from_info(info, path, origin)
    source = f"{kind} from {origin}" + (f" as {principal}" if principal else "")
    if refresh:
        _refresh(credentials, info, origin, principal, timeout)
    logger.info("GCP credentials: %s; project %s", source, resolved_project)
    return GcpSession(
        credentials=credentials, project=resolved_project, source=source, principal=principal
    )


def _read_json(path: Path, origin: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise GcpAuthError(f"cannot read credentials file {path} ({origin}): {exc}") from exc
    except ValueError as exc:
        raise GcpAuthError(
            f"credentials file {path} ({origin}) is not JSON: check that it is the file "
            "google-github-actions/auth wrote, or a service-account key"
        ) from exc
    if not isinstance(data, dict):
        raise GcpAuthError(f"credentials file {path} ({origin}) is not a JSON object")
    return data


def _credentials_from_info(
    info: dict[str, Any], path: Path, origin: str
) -> tuple[Credentials, str, str | None]:
    """Build (credentials, kind, principal) without any network call."""
    kind = info.get("type")
    scopes = [CLOUD_PLATFORM_SCOPE]
    try:
        if kind == "external_account":
            return _external_account(info, scopes)
        if kind == "service_account":
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_info(info, scopes=scopes)
            return creds, "service account key", creds.service_account_email
        if kind == "authorized_user":
            from google.oauth2 import credentials as user_credentials

            creds = user_credentials.Credentials.from_authorized_user_info(info, scopes=scopes)
            return creds, "gcloud user credentials", None
        if kind == "impersonated_service_account":
            return _impersonated(info, path, origin, scopes)
    except (ValueError, KeyError, google.auth.exceptions.GoogleAuthError) as exc:
        raise GcpAuthError(
            f"credentials file {path} ({origin}) of type {kind!r} is malformed: {exc}"
        ) from exc
    raise GcpAuthError(
        f"credentials file {path} ({origin}) has type {kind!r}; supported: external_account "
        "(Workload Identity Federation), service_account, authorized_user, "
        "impersonated_service_account"
    )


def _external_account(
    info: dict[str, Any], scopes: list[str]
) -> tuple[Credentials, str, str | None]:
    source = info.get("credential_source") or {}
    if info.get("subject_token_type") == "urn:ietf:params:aws:token-type:aws4_request":
        from google.auth import aws

        creds: Any = aws.Credentials.from_info(info, scopes=scopes)
    elif isinstance(source, dict) and source.get("executable") is not None:
        from google.auth import pluggable

        creds = pluggable.Credentials.from_info(info, scopes=scopes)
    else:
        from google.auth import identity_pool

        creds = identity_pool.Credentials.from_info(info, scopes=scopes)
    principal = creds.service_account_email
    kind = "workload identity federation" + (" with impersonation" if principal else "")
    return creds, kind, principal


def _impersonated(
    info: dict[str, Any], path: Path, origin: str, scopes: list[str]
) -> tuple[Credentials, str, str | None]:
    from google.auth import impersonated_credentials

    url = info.get("service_account_impersonation_url", "")
    match = _IMPERSONATION_RE.search(url)
    if not match:
        raise GcpAuthError(
            f"credentials file {path} ({origin}): service_account_impersonation_url {url!r} "
            "does not name a service account"
        )
    source_info = info.get("source_credentials")
    if not isinstance(source_info, dict):
        raise GcpAuthError(f"credentials file {path} ({origin}) has no source_credentials")
    source, _, _ = _credentials_from_info(source_info, path, origin)
    creds = impersonated_credentials.Credentials(
        source_credentials=source,
        target_principal=match.group(1),
        target_scopes=scopes,
        delegates=info.get("delegates") or None,
        iam_endpoint_override=url,
    )
    return creds, "gcloud credentials impersonating a service account", match.group(1)


def _refresh(
    credentials: Credentials,
    info: dict[str, Any],
    origin: str,
    principal: str | None,
    timeout: float,
) -> None:
    session = requests.Session()
    try:
        request = google.auth.transport.requests.Request(session)
        credentials.refresh(_with_timeout(request, timeout))
    except google.auth.exceptions.GoogleAuthError as exc:
        raise GcpAuthError(_explain_refresh_failure(exc, info, origin, principal)) from exc
    except requests.RequestException as exc:
        raise GcpAuthError(
            f"could not reach a Google token endpoint while refreshing credentials from "
            f"{origin}: {exc}"
        ) from exc
    finally:
        session.close()
    if not credentials.token:
        raise GcpAuthError(f"refreshing credentials from {origin} returned no access token")


def _with_timeout(
    request: google.auth.transport.requests.Request, timeout: float
) -> google.auth.transport.Request:
    """A transport that applies TIMEOUT to every call google-auth makes without one."""

    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        return request(*args, **kwargs)

    return call  # type: ignore[return-value]


def _short_detail(exc: google.auth.exceptions.GoogleAuthError) -> str:
    """google-auth's message plus the server's own error text, without the raw body."""
    args = [str(arg) for arg in exc.args if arg]
    if not args:
        return type(exc).__name__
    head, rest = args[0], args[1:]
    for raw in rest:
        try:
            body = json.loads(raw)
        except ValueError:
            head += f" {raw[:200]}"
            continue
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            head += f": {error['message']}"
        elif isinstance(body, dict) and body.get("message"):
            head += f": {body['message']}"
    return head[:500]


def _explain_refresh_failure(
    exc: google.auth.exceptions.GoogleAuthError,
    info: dict[str, Any],
    origin: str,
    principal: str | None,
) -> str:
    """A message that says which setting to check for this refresh failure."""
    detail = _short_detail(exc)
    kind = info.get("type")
    if kind == "external_account":
        if isinstance(exc, google.auth.exceptions.OAuthError):
            return (
                "Workload Identity Federation: the Security Token Service refused the GitHub "
                f"token ({detail}): {_HINT_WIF}; credentials from {origin}"
            )
        if "subject token" in detail or "credential_source" in detail:
            return (
                "Workload Identity Federation: could not fetch the GitHub OIDC token from "
                f"credential_source.url ({detail}): {_HINT_OIDC}; credentials from {origin}"
            )
        if principal and "impersonat" in detail:
            return (
                f"Workload Identity Federation: could not act as service account {principal} "
                f"({detail}): check the GCP_SERVICE_ACCOUNT given to google-github-actions/auth "
                "and that the workload identity pool's principal has "
                "roles/iam.workloadIdentityUser on it (and the IAM Credentials API is enabled)"
            )
        return (
            f"Workload Identity Federation failed ({detail}): {_HINT_WIF}; {_HINT_OIDC}; "
            f"credentials from {origin}"
        )
    if kind == "service_account":
        return (
            f"service-account key from {origin} was refused ({detail}): check "
            f"GOOGLE_APPLICATION_CREDENTIALS points at a current key of {principal} (keys can "
            "be deleted or disabled, and the account itself disabled)"
        )
    if kind == "impersonated_service_account":
        return (
            f"could not impersonate {principal} with credentials from {origin} ({detail}): "
            "check that your account has roles/iam.serviceAccountTokenCreator on it, or run "
            "`gcloud auth application-default login` again"
        )
    return (
        f"gcloud user credentials from {origin} were refused ({detail}): run "
        "`gcloud auth application-default login` again"
    )


__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "GcpAuthError",
    "GcpSession",
    "find_credentials_file",
    "load_credentials",
    "resolve_project",
]
