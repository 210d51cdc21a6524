"""OS Login detected from the instance's metadata or the project's commonInstanceMetadata
(projects.get), against the fake with the real client library: the deploy then imports its key
into OS Login instead of writing an ssh-keys entry the guest would ignore, or, when
AI_DEPLOY_SSH_MODE=metadata was chosen, stops at once naming that setting."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.ci.connect import fleet_access
from ai_deploy.ci.connect import ssh as ci_ssh
from ai_deploy.ci.context import Run
from ai_deploy.ci.options import DeployOptions, PhaseFailed
from ai_deploy.gcp.oslogin import OsLoginState, oslogin_state, ssh_settings_for
from ai_deploy.gcp.sshkeys import SshKeyError, SshSettings
from ai_deploy.report import output as ci_output
from tests.fakes.gcp import FakeGcp

pytestmark = pytest.mark.gcp

PROJECT = "dojangkok-ai"
ZONE = "asia-northeast3-a"
INSTANCE = "ai-server-prod"


def _state(fake: FakeGcp, creds: TokenCredentials) -> OsLoginState:
    del fake  # the state is read through the client, from the fake the endpoint points at
    return oslogin_state(creds, PROJECT, ZONE, INSTANCE)


def test_nothing_set_means_off(gcp_fake: FakeGcp, token_credentials: TokenCredentials) -> None:
    assert _state(gcp_fake, token_credentials) == OsLoginState(False)
    (read,) = gcp_fake.requests_to("GET", rf"^/compute/v1/projects/{PROJECT}$")
    assert read.authorization == f"Bearer {token_credentials.token}"


@pytest.mark.parametrize("value", ["TRUE", "true", "True"])
def test_the_project_turns_it_on(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, value: str
) -> None:
    gcp_fake.set_project_metadata("enable-oslogin", value)
    state = _state(gcp_fake, token_credentials)
    assert state == OsLoginState(True, "project metadata (commonInstanceMetadata)", value)


def test_the_instance_turns_it_on_without_asking_the_project(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.set_metadata("enable-oslogin", "TRUE")
    assert _state(gcp_fake, token_credentials) == OsLoginState(True, "instance metadata", "TRUE")
    assert gcp_fake.requests_to("GET", rf"^/compute/v1/projects/{PROJECT}$") == []


def test_the_instance_turns_off_what_the_project_turns_on(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.set_project_metadata("enable-oslogin", "TRUE")
    gcp_fake.set_metadata("enable-oslogin", "FALSE")
    assert _state(gcp_fake, token_credentials) == OsLoginState(False, "instance metadata", "FALSE")


def test_default_mode_switches_to_os_login_and_says_so(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.set_project_metadata("enable-oslogin", "TRUE")
    settings, note = ssh_settings_for(
        token_credentials, PROJECT, ZONE, INSTANCE, SshSettings(), mode_chosen=False
    )
    assert settings.mode == "oslogin"
    assert note is not None
    assert "enable-oslogin=TRUE in the project metadata" in note and PROJECT in note
    assert "AI_DEPLOY_SSH_MODE" in note


def test_metadata_mode_chosen_with_os_login_on_names_the_setting(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.set_project_metadata("enable-oslogin", "true")
    with pytest.raises(SshKeyError, match="AI_DEPLOY_SSH_MODE=oslogin") as caught:
        ssh_settings_for(
            token_credentials, PROJECT, ZONE, INSTANCE, SshSettings(), mode_chosen=True
        )
    assert "AI_DEPLOY_SSH_MODE=metadata cannot work" in str(caught.value)


def test_other_modes_are_left_alone_without_a_call(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.set_project_metadata("enable-oslogin", "TRUE")
    chosen = SshSettings(mode="oslogin")
    assert ssh_settings_for(
        token_credentials, PROJECT, ZONE, INSTANCE, chosen, mode_chosen=True
    ) == (chosen, None)
    assert gcp_fake.requests == []


def test_a_project_that_cannot_be_read_keeps_the_mode_and_says_so(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.inject(
        "GET",
        rf"^/compute/v1/projects/{PROJECT}$",
        status=403,
        reason="forbidden",
        message="Required 'compute.projects.get' permission",
        times=None,
    )
    settings, note = ssh_settings_for(
        token_credentials, PROJECT, ZONE, INSTANCE, SshSettings(), mode_chosen=False
    )
    assert settings.mode == "metadata"
    assert note is not None and "compute.projects.get" in note


# --- the deploy's key phase -----------------------------------------------------------------


@dataclass
class _Session:
    credentials: Any
    project: str
    principal: str | None


def _run(fake: FakeGcp, creds: TokenCredentials, environ: dict[str, str], tmp: Path) -> Run:
    opts = DeployOptions(artifact=tmp / "a.tar.gz", zone=ZONE, instance=INSTANCE)
    run = Run(opts, environ, ci_output.Phases(env=environ))
    run.session = _Session(creds, PROJECT, fake.state.service_account)
    run.targets = [(INSTANCE, ZONE, "10.201.9.2")]
    run.known_hosts = tmp / "known_hosts"
    return run


def test_the_ssh_phase_uses_os_login_when_the_project_enables_it(
    gcp_fake: FakeGcp,
    token_credentials: TokenCredentials,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gcp_fake.set_project_metadata("enable-oslogin", "TRUE")
    sa = gcp_fake.state.service_account
    waited: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ci_ssh, "wait_for_ssh", lambda *a, **k: waited.append(a))
    run = _run(gcp_fake, token_credentials, {}, tmp_path)
    with ExitStack() as stack:
        fleet_access.fleet_keys_phase(run, stack, tmp_path)
        (record,) = gcp_fake.state.oslogin_keys[sa].values()
        assert run.user == "sa_github_actions"
        assert waited and waited[0][1] == "sa_github_actions"
        assert record["key"].startswith("ssh-ed25519 ")
        assert run.key is not None and run.key.exists()
    assert gcp_fake.state.oslogin_keys[sa] == {}
    assert gcp_fake.requests_to("POST", r"/setMetadata$") == []
    assert "ssh-keys" not in gcp_fake.state.instance.metadata
    assert "OS Login is on (enable-oslogin=TRUE in the project metadata" in capsys.readouterr().out


def test_the_ssh_phase_stops_at_once_when_metadata_mode_was_chosen(
    gcp_fake: FakeGcp,
    token_credentials: TokenCredentials,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gcp_fake.set_project_metadata("enable-oslogin", "TRUE")
    monkeypatch.setattr(ci_ssh, "wait_for_ssh", lambda *a, **k: pytest.fail("waited for SSH"))
    run = _run(gcp_fake, token_credentials, {"AI_DEPLOY_SSH_MODE": "metadata"}, tmp_path)
    started = time.monotonic()
    with ExitStack() as stack, pytest.raises(PhaseFailed) as caught:
        fleet_access.fleet_keys_phase(run, stack, tmp_path)
    assert time.monotonic() - started < 30
    assert caught.value.phase == "ssh"
    assert "AI_DEPLOY_SSH_MODE" in str(caught.value)
    assert gcp_fake.requests_to("POST", r"/setMetadata$") == []
    assert gcp_fake.requests_to("POST", r":importSshPublicKey$") == []
