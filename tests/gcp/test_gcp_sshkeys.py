"""The per-run SSH key: authorized through instance metadata (or OS Login, or a provided key)
for the duration of the block, and gone afterwards together with the private key file."""

from __future__ import annotations

import json
import re
import signal
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.gcp.sshkeys import (
    SshKeyError,
    SshSettings,
    entry_expiry,
    ephemeral_ssh_key,
    generate_key_pair,
    ssh_keys_entry,
)
from tests.fakes.gcp import FakeGcp

pytestmark = pytest.mark.gcp

PROJECT = "dojangkok-ai"
ZONE = "asia-northeast3-a"
INSTANCE = "ai-server-prod"
ENTRY = re.compile(
    r"(?P<user>[a-z_][a-z0-9_.-]*):ssh-ed25519 (?P<blob>AAAA[A-Za-z0-9+/=]+) google-ssh "
    r"(?P<json>\{.*\})"
)


class Boom(Exception):
    pass


def _ssh_keys(fake: FakeGcp) -> list[str]:
    return fake.state.instance.metadata.get("ssh-keys", "").splitlines()


def _assert_private(access_path: Path) -> None:
    assert stat.S_IMODE(access_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(access_path.parent.stat().st_mode) == 0o700
    assert not access_path.resolve().is_relative_to(Path(__file__).resolve().parents[2])


def test_entry_format_is_gclouds() -> None:
    expire = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    line = ssh_keys_entry("ai-deploy", "ssh-ed25519 AAAAC3Nz comment@host", expire)
    assert line == (
        "ai-deploy:ssh-ed25519 AAAAC3Nz google-ssh "
        '{"userName":"ai-deploy","expireOn":"2030-01-02T03:04:05Z"}'
    )
    assert entry_expiry(line) == expire
    gcloud_style = line.replace("05Z", "05+0000")
    assert entry_expiry(gcloud_style) == expire
    assert entry_expiry("alice:ssh-rsa AAAA alice@laptop") is None


def test_metadata_key_is_added_with_expiry_and_removed_afterwards(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    other = "alice:ssh-ed25519 AAAAalice alice@laptop"
    gcp_fake.set_metadata("ssh-keys", other)
    gcp_fake.set_metadata("startup-script", "echo hi")
    gcp_fake.plan_operations("POST", r"/setMetadata$", running_polls=2, times=2)
    before = datetime.now(timezone.utc)
    settings = SshSettings(ttl=timedelta(minutes=20))

    with ephemeral_ssh_key(
        token_credentials, PROJECT, zone=ZONE, instance=INSTANCE, settings=settings
    ) as access:
        keys = _ssh_keys(gcp_fake)
        assert keys[0] == other
        match = ENTRY.fullmatch(keys[1])
        assert match, keys
        assert match["user"] == access.user == "ai-deploy"
        stamp = json.loads(match["json"])
        assert stamp["userName"] == "ai-deploy"
        expire_on = datetime.strptime(stamp["expireOn"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc
        )
        assert before + timedelta(minutes=19) < expire_on <= before + timedelta(minutes=21)
        # The key in metadata is the one whose private half we hold.
        public = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(access.private_key_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert public[:2] == ["ssh-ed25519", match["blob"]]
        assert access.metadata_entry == keys[1]
        _assert_private(access.private_key_path)
        key_dir = access.private_key_path.parent

    assert _ssh_keys(gcp_fake) == [other]
    assert gcp_fake.state.instance.metadata["startup-script"] == "echo hi"
    assert not key_dir.exists()
    for request in gcp_fake.requests_to("POST", r"/setMetadata$"):
        assert request.json()["fingerprint"]


def test_exception_removes_the_entry_and_the_key_file(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    with (
        pytest.raises(Boom),
        ephemeral_ssh_key(token_credentials, PROJECT, zone=ZONE, instance=INSTANCE) as access,
    ):
        assert len(_ssh_keys(gcp_fake)) == 1
        raise Boom
    assert "ssh-keys" not in gcp_fake.state.instance.metadata
    assert not access.private_key_path.exists()
    assert not access.private_key_path.parent.exists()


def test_expired_leftovers_of_the_same_user_are_pruned(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    past = datetime.now(timezone.utc) - timedelta(days=1)
    future = datetime.now(timezone.utc) + timedelta(days=1)
    stale = ssh_keys_entry("ai-deploy", "ssh-ed25519 AAAAstale", past)
    alive = ssh_keys_entry("ai-deploy", "ssh-ed25519 AAAAalive", future)
    others = ssh_keys_entry("bob", "ssh-ed25519 AAAAbob", past)
    gcp_fake.set_metadata("ssh-keys", "\n".join([stale, alive, others]))
    with ephemeral_ssh_key(token_credentials, PROJECT, zone=ZONE, instance=INSTANCE):
        keys = _ssh_keys(gcp_fake)
        assert stale not in keys
        assert alive in keys and others in keys
    assert _ssh_keys(gcp_fake) == [alive, others]


def test_concurrent_metadata_change_is_not_lost(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.inject(
        "POST",
        r"/setMetadata$",
        status=None,
        before=lambda request: gcp_fake.set_metadata("ssh-keys", "carol:ssh-ed25519 AAAAcarol"),
    )
    with ephemeral_ssh_key(token_credentials, PROJECT, zone=ZONE, instance=INSTANCE):
        assert _ssh_keys(gcp_fake)[0] == "carol:ssh-ed25519 AAAAcarol"
        assert len(_ssh_keys(gcp_fake)) == 2
    assert _ssh_keys(gcp_fake) == ["carol:ssh-ed25519 AAAAcarol"]


def test_two_412s_in_a_row_on_the_removal_leave_nothing_and_raise_nothing(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer changes the metadata between each of the removal's reads and writes,
    twice: the removal reads again, retries with the fresh fingerprint, and the key goes
    while the writer's own key stays (the run keeps its outcome: nothing is raised)."""
    from ai_deploy.gcp import operations

    monkeypatch.setattr(operations, "RETRY_BASE_S", 0.01)
    monkeypatch.setattr(operations, "RETRY_CAP_S", 0.05)
    carol = "carol:ssh-ed25519 AAAAcarol"
    with ephemeral_ssh_key(token_credentials, PROJECT, zone=ZONE, instance=INSTANCE):
        gcp_fake.inject(
            "POST",
            r"/setMetadata$",
            status=None,
            before=lambda request: gcp_fake.set_metadata(
                "ssh-keys", "\n".join([*(k for k in _ssh_keys(gcp_fake) if k != carol), carol])
            ),
            times=2,
        )
    assert _ssh_keys(gcp_fake) == [carol]
    assert len(gcp_fake.requests_to("POST", r"/setMetadata$")) == 4  # add, 412, 412, removal


def test_os_login_instance_refuses_metadata_mode(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.set_metadata("enable-oslogin", "TRUE")
    with (
        pytest.raises(SshKeyError, match="AI_DEPLOY_SSH_MODE=oslogin"),
        ephemeral_ssh_key(token_credentials, PROJECT, zone=ZONE, instance=INSTANCE),
    ):
        pytest.fail("the block must not run")
    assert gcp_fake.requests_to("POST", r"/setMetadata$") == []


def test_forbidden_set_metadata_names_the_permission(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, tmp_path: Path
) -> None:
    gcp_fake.inject("POST", r"/setMetadata$", status=403, reason="forbidden", message="denied")
    with (
        pytest.raises(SshKeyError, match=r"compute\.instances\.setMetadata") as caught,
        ephemeral_ssh_key(token_credentials, PROJECT, zone=ZONE, instance=INSTANCE),
    ):
        pass
    assert "roles/iam.serviceAccountUser" in str(caught.value)


def test_unknown_instance_names_the_settings(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    with (
        pytest.raises(SshKeyError, match="GCP_INSTANCE"),
        ephemeral_ssh_key(token_credentials, PROJECT, zone=ZONE, instance="nope"),
    ):
        pass


def test_os_login_mode_imports_and_deletes_the_key(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    sa = gcp_fake.state.service_account
    settings = SshSettings(mode="oslogin", ttl=timedelta(minutes=30))
    before = datetime.now(timezone.utc)
    with ephemeral_ssh_key(
        token_credentials, PROJECT, zone=ZONE, instance=INSTANCE, settings=settings, principal=sa
    ) as access:
        (record,) = gcp_fake.state.oslogin_keys[sa].values()
        assert record["key"].split()[1] == access.public_key.split()[1]
        expires = datetime.fromtimestamp(int(record["expirationTimeUsec"]) / 1e6, timezone.utc)
        assert before + timedelta(minutes=29) < expires <= before + timedelta(minutes=31)
        assert access.user == "sa_github-actions".replace("-", "_")
        assert access.oslogin_fingerprint == record["fingerprint"]
        _assert_private(access.private_key_path)
    assert gcp_fake.state.oslogin_keys[sa] == {}
    assert not access.private_key_path.exists()
    (imported,) = gcp_fake.requests_to("POST", r":importSshPublicKey$")
    assert imported.query["projectId"] == [PROJECT]
    assert imported.authorization == f"Bearer {token_credentials.token}"
    assert "ssh-keys" not in gcp_fake.state.instance.metadata


def test_os_login_rate_limits_and_5xx_are_retried_and_the_key_still_goes(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    """The import answered 429 and then 503 after taking effect; the delete answered 503:
    each retried, one key imported, and none left."""
    sa = gcp_fake.state.service_account
    gcp_fake.inject("POST", r":importSshPublicKey$", status=429, reason="rateLimitExceeded")
    gcp_fake.inject("POST", r":importSshPublicKey$", status=503, applied=True)
    gcp_fake.inject("DELETE", r"/sshPublicKeys/", status=503)
    with ephemeral_ssh_key(
        token_credentials,
        PROJECT,
        zone=ZONE,
        instance=INSTANCE,
        settings=SshSettings(mode="oslogin"),
        principal=sa,
    ) as access:
        assert len(gcp_fake.state.oslogin_keys[sa]) == 1
        assert access.oslogin_fingerprint in gcp_fake.state.oslogin_keys[sa]
    assert gcp_fake.state.oslogin_keys[sa] == {}
    assert len(gcp_fake.requests_to("POST", r":importSshPublicKey$")) == 3
    assert len(gcp_fake.requests_to("DELETE", r"/sshPublicKeys/")) == 2


def test_os_login_refused_names_the_role_and_leaves_nothing(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args: Any, **kwargs: Any) -> str:
        made.append(Path(real_mkdtemp(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    gcp_fake.inject("POST", r":importSshPublicKey$", status=403, reason="forbidden")
    with (
        pytest.raises(SshKeyError, match=r"roles/compute\.osAdminLogin"),
        ephemeral_ssh_key(
            token_credentials,
            PROJECT,
            zone=ZONE,
            instance=INSTANCE,
            settings=SshSettings(mode="oslogin"),
            principal=gcp_fake.state.service_account,
        ),
    ):
        pass
    assert made and not made[0].exists()
    assert gcp_fake.requests_to("GET", r"/loginProfile$") == []


def test_os_login_without_a_service_account_says_what_to_set(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    with (
        pytest.raises(SshKeyError, match="AI_DEPLOY_OSLOGIN_USER"),
        ephemeral_ssh_key(
            token_credentials,
            PROJECT,
            zone=ZONE,
            instance=INSTANCE,
            settings=SshSettings(mode="oslogin"),
        ),
    ):
        pass


@pytest.mark.parametrize("as_path", [False, True])
def test_provided_key_is_written_private_and_nothing_changes_in_gcp(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, tmp_path: Path, as_path: bool
) -> None:
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    private, public = generate_key_pair(source_dir)
    # As pasted into a CI secret: CRLF line ends, no final newline.
    content = private.read_text().strip().replace("\n", "\r\n")
    value = str(private) if as_path else content
    settings = SshSettings.from_env(
        {"AI_DEPLOY_SSH_PRIVATE_KEY": value, "AI_DEPLOY_SSH_USER": "deploy"}
    )
    assert settings.mode == "provided"

    with ephemeral_ssh_key(
        token_credentials, PROJECT, zone=ZONE, instance=INSTANCE, settings=settings
    ) as access:
        assert access.mode == "provided"
        assert access.user == "deploy"
        assert access.public_key.split()[:2] == public.split()[:2]
        assert access.private_key_path.read_text().endswith("-----\n")
        assert "\r" not in access.private_key_path.read_text()
        _assert_private(access.private_key_path)
    assert not access.private_key_path.parent.exists()
    assert gcp_fake.requests == []


def test_provided_key_that_is_not_a_key_is_refused(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    settings = SshSettings(mode="provided", provided_key="-----BEGIN OPENSSH PRIVATE KEY-----\nx")
    with (
        pytest.raises(SshKeyError, match="AI_DEPLOY_SSH_PRIVATE_KEY"),
        ephemeral_ssh_key(
            token_credentials, PROJECT, zone=ZONE, instance=INSTANCE, settings=settings
        ),
    ):
        pass


def test_settings_from_env() -> None:
    assert SshSettings.from_env({}) == SshSettings()
    tuned = SshSettings.from_env(
        {"AI_DEPLOY_SSH_MODE": "OSLOGIN", "AI_DEPLOY_SSH_KEY_TTL_MINUTES": "15"}
    )
    assert (tuned.mode, tuned.ttl) == ("oslogin", timedelta(minutes=15))
    for env, variable in [
        ({"AI_DEPLOY_SSH_MODE": "telnet"}, "AI_DEPLOY_SSH_MODE"),
        ({"AI_DEPLOY_SSH_MODE": "provided"}, "AI_DEPLOY_SSH_PRIVATE_KEY"),
        ({"AI_DEPLOY_SSH_USER": "root"}, "AI_DEPLOY_SSH_USER"),
        ({"AI_DEPLOY_SSH_USER": "Bad User"}, "AI_DEPLOY_SSH_USER"),
        ({"AI_DEPLOY_SSH_KEY_TTL_MINUTES": "soon"}, "AI_DEPLOY_SSH_KEY_TTL_MINUTES"),
    ]:
        with pytest.raises(SshKeyError, match=variable):
            SshSettings.from_env(env)


CHILD_KEY_ONLY = textwrap.dedent(
    """
    import sys, time
    from ai_deploy.gcp import Terminated
    from ai_deploy.gcp.auth import load_credentials
    from ai_deploy.gcp.sshkeys import ephemeral_ssh_key

    s = load_credentials()
    try:
        with ephemeral_ssh_key(
            s.credentials, s.project, zone="asia-northeast3-a", instance="ai-server-prod"
        ) as access:
            print("READY", "-", access.private_key_path, flush=True)
            time.sleep(60)
    except Terminated as exc:
        sys.exit(exc.exit_code)
    """
)

CHILD_WINDOW_AND_KEY = textwrap.dedent(
    """
    import sys, time
    from ai_deploy.gcp import Terminated
    from ai_deploy.gcp.auth import load_credentials
    from ai_deploy.gcp.firewall import firewall_window
    from ai_deploy.gcp.sshkeys import ephemeral_ssh_key

    s = load_credentials()
    try:
        with firewall_window(s.credentials, s.project, source_ip="203.0.113.7") as window:
            with ephemeral_ssh_key(
                s.credentials, s.project, zone="asia-northeast3-a", instance="ai-server-prod"
            ) as access:
                print("READY", window.name, access.private_key_path, flush=True)
                time.sleep(60)
    except Terminated as exc:
        sys.exit(exc.exit_code)
    """
)


@pytest.mark.parametrize("script", [CHILD_KEY_ONLY, CHILD_WINDOW_AND_KEY], ids=["key", "both"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_inside_the_key_block_cleans_up(
    gcp_fake: FakeGcp,
    github_workload_identity: Callable[..., Path],
    child_python: Callable[[str], Any],
    script: str,
    signum: signal.Signals,
) -> None:
    github_workload_identity()
    child = child_python(script)
    _, rule, key_path = child.wait_for_line("READY").split()
    assert rule == "-" or rule in gcp_fake.state.firewalls
    assert len(_ssh_keys(gcp_fake)) == 1
    assert Path(key_path).exists()

    child.proc.send_signal(signum)
    assert child.finish() == 128 + signum, child.text

    assert gcp_fake.state.firewalls == {}
    assert "ssh-keys" not in gcp_fake.state.instance.metadata
    assert not Path(key_path).exists()
    assert not Path(key_path).parent.exists()
