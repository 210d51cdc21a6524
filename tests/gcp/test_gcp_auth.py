"""Credentials as google-github-actions/auth leaves them, a key file and gcloud's ADC, with the
real google-auth library talking to the loopback server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ai_deploy.gcp import compute
from ai_deploy.gcp.auth import GcpAuthError, load_credentials, resolve_project
from tests.fakes.gcp import (
    CLOUD_PLATFORM_SCOPE,
    IAM_SCOPE,
    TOKEN_EXCHANGE_GRANT,
    FakeGcp,
    self_signed_jwt_claims,
    write_json,
)

pytestmark = pytest.mark.gcp

WorkloadIdentity = Callable[..., Path]


def _compute_requests(fake: FakeGcp) -> list:
    return [r for r in fake.requests if r.path.startswith("/compute/")]


def test_impersonated_workload_identity_token_reaches_compute(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity
) -> None:
    github_workload_identity()
    session = load_credentials()

    sa = gcp_fake.state.service_account
    assert session.project == gcp_fake.state.project
    assert session.principal == sa
    assert "impersonation" in session.source

    # The exchange on the wire: OIDC with the runner token, STS with the IAM scope, then IAM.
    (oidc,) = gcp_fake.requests_to("GET", r"^/github/oidc$")
    assert oidc.authorization == f"Bearer {gcp_fake.state.github_request_token}"
    assert oidc.query["audience"] == [
        "https://iam.googleapis.com/" + gcp_fake.state.workload_identity_provider
    ]
    (sts,) = gcp_fake.requests_to("POST", r"^/sts/v1/token$")
    form = sts.form()
    assert form["grant_type"] == TOKEN_EXCHANGE_GRANT
    assert form["audience"] == gcp_fake.state.audience
    assert form["scope"] == IAM_SCOPE
    assert form["subject_token"] in gcp_fake.state.oidc_tokens
    (iam,) = gcp_fake.requests_to("POST", r":generateAccessToken$")
    assert sa in iam.path
    assert json.loads(iam.body)["scope"] == [CLOUD_PLATFORM_SCOPE]

    # Refreshed up front: the token exists before any Compute call.
    impersonated = session.credentials.token
    assert gcp_fake.state.tokens[impersonated]["who"] == sa
    assert _compute_requests(gcp_fake) == []

    info = compute.get_instance(
        session.credentials, session.project, "asia-northeast3-a", "ai-server-prod"
    )
    assert info.nat_ip == gcp_fake.state.instance.nat_ip
    calls = _compute_requests(gcp_fake)
    assert calls and all(r.authorization == f"Bearer {impersonated}" for r in calls)
    # No token exchange was repeated for the Compute call.
    assert len(gcp_fake.requests_to("POST", r"^/sts/v1/token$")) == 1


def test_direct_workload_identity_uses_federated_token(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity
) -> None:
    github_workload_identity(service_account=None)
    session = load_credentials()

    assert session.principal is None
    assert gcp_fake.requests_to("POST", r":generateAccessToken$") == []
    (sts,) = gcp_fake.requests_to("POST", r"^/sts/v1/token$")
    assert sts.form()["scope"] == CLOUD_PLATFORM_SCOPE
    compute.get_instance(
        session.credentials, session.project, "asia-northeast3-a", "ai-server-prod"
    )
    calls = _compute_requests(gcp_fake)
    assert calls and all(r.authorization == f"Bearer {session.credentials.token}" for r in calls)


def test_only_token_endpoints_are_called_while_loading(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity
) -> None:
    github_workload_identity()
    load_credentials()
    paths = {r.path.split(":")[0] for r in gcp_fake.requests}
    assert paths == {
        "/github/oidc",
        "/sts/v1/token",
        f"/iam/v1/projects/-/serviceAccounts/{gcp_fake.state.service_account}",
    }


def test_project_from_the_seed_secret_needs_no_lookup(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only GCP_PROJECT_ID (no GOOGLE_CLOUD_PROJECT), google.auth.default() would ask
    Cloud Resource Manager for the project; load_credentials must not."""
    github_workload_identity()
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    monkeypatch.setenv("GCP_PROJECT_ID", "dojangkok-ai")
    lookups: list[str] = []
    import google.auth.transport.requests as transport

    real_call = transport.Request.__call__

    def spy(self, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        lookups.append(url)
        return real_call(self, url, *args, **kwargs)

    monkeypatch.setattr(transport.Request, "__call__", spy)
    session = load_credentials()
    assert session.project == "dojangkok-ai"
    assert lookups and all(url.startswith(gcp_fake.url) for url in lookups), lookups


def test_wrong_github_request_token_says_to_check_id_token_permission(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity
) -> None:
    github_workload_identity(request_token="stale-runner-token")
    with pytest.raises(GcpAuthError) as caught:
        load_credentials()
    message = str(caught.value)
    assert "id-token: write" in message
    assert "GitHub OIDC token" in message
    assert gcp_fake.requests_to("POST", r"^/sts/") == []
    assert _compute_requests(gcp_fake) == []


def test_unknown_workload_identity_provider_names_the_setting(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity
) -> None:
    github_workload_identity(
        audience="//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/x/providers/y"
    )
    with pytest.raises(GcpAuthError, match="WORKLOAD_IDENTITY_PROVIDER") as caught:
        load_credentials()
    assert "invalid_target" in str(caught.value)


def test_service_account_not_allowed_names_the_setting(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity
) -> None:
    github_workload_identity(service_account="someone-else@dojangkok-ai.iam.gserviceaccount.com")
    with pytest.raises(GcpAuthError) as caught:
        load_credentials()
    message = str(caught.value)
    assert "GCP_SERVICE_ACCOUNT" in message
    assert "roles/iam.workloadIdentityUser" in message
    assert "someone-else@" in message


def test_missing_credentials_file_names_the_variable(
    gcp_fake: FakeGcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GCP_PROJECT_ID", "dojangkok-ai")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gone.json"))
    with pytest.raises(GcpAuthError, match=r"GOOGLE_APPLICATION_CREDENTIALS=.*gone\.json"):
        load_credentials()


def test_no_credentials_at_all_explains_ci_and_laptop_setups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GCP_PROJECT_ID", "dojangkok-ai")
    with pytest.raises(GcpAuthError) as caught:
        load_credentials()
    message = str(caught.value)
    assert "google-github-actions/auth" in message
    assert "id-token: write" in message
    assert "gcloud auth application-default login" in message


def test_not_json_credentials_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text("<html>")
    with pytest.raises(GcpAuthError, match="not JSON"):
        load_credentials("dojangkok-ai", credentials_file=path)


def test_project_comes_from_argument_then_variables_never_a_lookup() -> None:
    env = {"GCP_PROJECT_ID": "from-secret", "GOOGLE_CLOUD_PROJECT": "from-auth-action"}
    assert resolve_project("explicit-one", env) == "explicit-one"
    assert resolve_project(None, env) == "from-secret"
    assert resolve_project(None, {"GOOGLE_CLOUD_PROJECT": "from-auth-action"}) == (
        "from-auth-action"
    )
    with pytest.raises(GcpAuthError, match="GCP_PROJECT_ID"):
        resolve_project(None, {})
    with pytest.raises(GcpAuthError, match="not a GCP project id"):
        resolve_project(None, {"GCP_PROJECT_ID": "Not A Project"})


def test_missing_project_fails_before_any_request(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    github_workload_identity()
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    with pytest.raises(GcpAuthError, match="GCP_PROJECT_ID"):
        load_credentials()
    assert gcp_fake.requests == []


def _service_account_key(fake: FakeGcp, email: str) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": fake.state.project,
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": email,
        "client_id": "111111111111111111111",
        "token_uri": f"{fake.url}/oauth2/token",
    }


def test_service_account_key_file(
    gcp_fake: FakeGcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    email = "deployer@dojangkok-ai.iam.gserviceaccount.com"
    path = write_json(tmp_path / "key.json", _service_account_key(gcp_fake, email))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    session = load_credentials("dojangkok-ai")
    assert session.principal == email
    (token_call,) = gcp_fake.requests_to("POST", r"^/oauth2/token$")
    assert token_call.form()["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    compute.get_instance(
        session.credentials, session.project, "asia-northeast3-a", "ai-server-prod"
    )
    # Google's client libraries switch service-account keys to self-signed JWTs.
    (call,) = _compute_requests(gcp_fake)
    assert self_signed_jwt_claims(call.authorization)["iss"] == email


def _authorized_user(fake: FakeGcp, refresh_token: str) -> dict:
    """gcloud's ADC file; it names no token endpoint (google-auth always uses its own)."""
    return {
        "type": "authorized_user",
        "client_id": "764086051850-fake.apps.googleusercontent.com",
        "client_secret": "fake-secret",
        "refresh_token": refresh_token,
    }


@pytest.fixture
def oauth2_endpoint_at_fake(gcp_fake: FakeGcp, monkeypatch: pytest.MonkeyPatch) -> None:
    """google-auth hard-codes oauth2.googleapis.com for user credentials; point it here."""
    import google.oauth2.credentials

    monkeypatch.setattr(
        google.oauth2.credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", f"{gcp_fake.url}/oauth2/token"
    )


@pytest.mark.usefixtures("oauth2_endpoint_at_fake")
def test_gcloud_application_default_credentials(
    gcp_fake: FakeGcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "gcloud"
    config.mkdir()
    info = _authorized_user(gcp_fake, gcp_fake.issue_refresh_token())
    write_json(config / "application_default_credentials.json", info)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(config))
    monkeypatch.setenv("GCP_PROJECT_ID", "dojangkok-ai")

    session = load_credentials()
    assert "gcloud" in session.source
    compute.get_instance(
        session.credentials, session.project, "asia-northeast3-a", "ai-server-prod"
    )
    assert _compute_requests(gcp_fake)[0].authorization == f"Bearer {session.credentials.token}"


@pytest.mark.usefixtures("oauth2_endpoint_at_fake")
def test_revoked_gcloud_login_says_to_log_in_again(
    gcp_fake: FakeGcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "adc.json", _authorized_user(gcp_fake, "1//revoked"))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(GcpAuthError, match="gcloud auth application-default login") as caught:
        load_credentials("dojangkok-ai")
    assert "expired or revoked" in str(caught.value)
    (call,) = gcp_fake.requests_to("POST", r"^/oauth2/token$")
    assert call.form()["refresh_token"] == "1//revoked"


@pytest.mark.usefixtures("oauth2_endpoint_at_fake")
def test_impersonated_service_account_file_from_gcloud(
    gcp_fake: FakeGcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sa = "deployer@dojangkok-ai.iam.gserviceaccount.com"
    gcp_fake.state.service_account = sa
    refresh_token = gcp_fake.issue_refresh_token()
    info = {
        "type": "impersonated_service_account",
        "service_account_impersonation_url": (
            f"{gcp_fake.url}/iam/v1/projects/-/serviceAccounts/{sa}:generateAccessToken"
        ),
        "source_credentials": _authorized_user(gcp_fake, refresh_token),
        "delegates": [],
    }
    path = write_json(tmp_path / "adc.json", info)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    session = load_credentials("dojangkok-ai")
    assert session.principal == sa
    assert gcp_fake.state.tokens[session.credentials.token]["who"] == sa
    (iam,) = gcp_fake.requests_to("POST", r":generateAccessToken$")
    user_token = iam.authorization.removeprefix("Bearer ")
    assert gcp_fake.state.tokens[user_token]["who"] == "user@example.com"


def test_oidc_url_keeps_the_runner_query(
    gcp_fake: FakeGcp, github_workload_identity: WorkloadIdentity
) -> None:
    path = github_workload_identity()
    url = json.loads(path.read_text())["credential_source"]["url"]
    query = parse_qs(urlsplit(url).query)
    assert query["api-version"] == ["2.0"]
    assert query["audience"][0].startswith("https://iam.googleapis.com/projects/")
