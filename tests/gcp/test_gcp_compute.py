"""The small Compute calls against the loopback server: endpoint, operations, errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from google.api_core import exceptions as api_exceptions
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.gcp import GcpError, compute
from tests.fakes.gcp import FakeGcp, RecordedRequest

pytestmark = pytest.mark.gcp

ZONE = "asia-northeast3-a"
INSTANCE = "ai-server-prod"


def _create(creds: TokenCredentials, fake: FakeGcp, name: str = "ai-deploy-ssh-1") -> None:
    compute.create_firewall_rule(
        creds,
        fake.state.project,
        name=name,
        source_ranges=["203.0.113.7/32"],
        target_tags=["ai-server"],
        description="test rule",
    )


def test_client_options_follow_the_endpoint_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compute.compute_client_options({}).api_endpoint is None
    options = compute.compute_client_options({"AI_DEPLOY_COMPUTE_ENDPOINT": "http://127.0.0.1:9/"})
    assert options.api_endpoint == "http://127.0.0.1:9"


def test_create_waits_for_a_running_operation_on_the_configured_endpoint(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.plan_operations("POST", r"/global/firewalls$", running_polls=3)
    _create(token_credentials, gcp_fake)

    # The fake applies the insert only when the operation turns DONE.
    rule = gcp_fake.state.firewalls["ai-deploy-ssh-1"]
    assert rule["sourceRanges"] == ["203.0.113.7/32"]
    assert rule["targetTags"] == ["ai-server"]
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert rule["network"].endswith("/projects/dojangkok-ai/global/networks/default")
    assert rule["direction"] == "INGRESS"
    assert rule["description"] == "test rule"
    waits = gcp_fake.requests_to("POST", r"/global/operations/[^/]+/wait$")
    assert len(waits) == 3


def test_operation_done_with_error_raises(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.plan_operations(
        "POST",
        r"/global/firewalls$",
        running_polls=1,
        error={
            "code": "QUOTA_EXCEEDED",
            "message": "Quota 'FIREWALLS' exceeded.",
            "http_status": 403,
        },
    )
    with pytest.raises(compute.OperationError, match="QUOTA_EXCEEDED") as caught:
        _create(token_credentials, gcp_fake)
    assert caught.value.http_status == 403
    assert caught.value.codes == ("QUOTA_EXCEEDED",)
    assert gcp_fake.state.firewalls == {}


def test_operation_that_never_finishes_times_out(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.plan_operations("POST", r"/global/firewalls$", running_polls=10_000)
    with pytest.raises(compute.OperationError, match="still RUNNING"):
        compute.create_firewall_rule(
            token_credentials,
            gcp_fake.state.project,
            name="ai-deploy-ssh-slow",
            source_ranges=["203.0.113.7/32"],
            target_tags=["ai-server"],
            timeout=0.3,
        )


def test_transient_500_on_create_is_retried(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.inject("POST", r"/global/firewalls$", status=500)
    _create(token_credentials, gcp_fake)
    assert "ai-deploy-ssh-1" in gcp_fake.state.firewalls
    assert len(gcp_fake.requests_to("POST", r"/global/firewalls$")) == 2


def test_conflict_and_forbidden_surface_as_api_errors(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    _create(token_credentials, gcp_fake)
    with pytest.raises(api_exceptions.Conflict) as conflict:
        _create(token_credentials, gcp_fake)
    assert conflict.value.errors[0]["reason"] == "alreadyExists"
    gcp_fake.inject(
        "POST",
        r"/global/firewalls$",
        status=403,
        reason="forbidden",
        message="Required 'compute.firewalls.create' permission for 'projects/dojangkok-ai'",
    )
    with pytest.raises(api_exceptions.Forbidden, match=r"compute\.firewalls\.create"):
        _create(token_credentials, gcp_fake, name="ai-deploy-ssh-2")


def test_delete_waits_and_treats_not_found_as_done(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    _create(token_credentials, gcp_fake)
    gcp_fake.plan_operations("DELETE", r"/global/firewalls/", running_polls=2)
    assert compute.delete_firewall_rule(token_credentials, "dojangkok-ai", "ai-deploy-ssh-1")
    assert gcp_fake.state.firewalls == {}
    assert not compute.delete_firewall_rule(token_credentials, "dojangkok-ai", "ai-deploy-ssh-1")


def test_list_by_prefix_reads_every_page_with_timestamps(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    old = datetime.now(timezone.utc) - timedelta(hours=3)
    gcp_fake.add_firewall("ai-deploy-ssh-a", created=old)
    gcp_fake.add_firewall("ai-deploy-ssh-b")
    gcp_fake.add_firewall("ai-deploy-ssh-c")
    gcp_fake.add_firewall("allow-ssh-ai-deploy-ssh-x")
    gcp_fake.add_firewall("default-allow-ssh")
    gcp_fake.state.firewall_page_size = 2

    rules = compute.list_firewall_rules(
        token_credentials, "dojangkok-ai", name_prefix="ai-deploy-ssh-"
    )
    assert [r.name for r in rules] == ["ai-deploy-ssh-a", "ai-deploy-ssh-b", "ai-deploy-ssh-c"]
    assert rules[0].created_at is not None
    assert abs(rules[0].created_at - old) < timedelta(seconds=1)
    lists = gcp_fake.requests_to("GET", r"/global/firewalls$")
    assert len(lists) == 2
    assert lists[0].query["filter"] == ['name eq "ai-deploy-ssh-.*"']
    assert compute.list_firewall_rules(token_credentials, "dojangkok-ai", name_prefix="zz-") == []


def test_instance_address_and_tags(gcp_fake: FakeGcp, token_credentials: TokenCredentials) -> None:
    info = compute.get_instance(token_credentials, "dojangkok-ai", ZONE, INSTANCE)
    assert info.nat_ip == "10.201.0.10"
    assert info.tags == ("ai-server",)
    assert info.network and info.network.endswith("/global/networks/default")
    assert compute.get_instance_nat_ip(token_credentials, "dojangkok-ai", ZONE, INSTANCE) == (
        "10.201.0.10"
    )
    gcp_fake.state.instance.nat_ip = None
    with pytest.raises(GcpError, match="no external IP"):
        compute.get_instance_nat_ip(token_credentials, "dojangkok-ai", ZONE, INSTANCE)
    with pytest.raises(api_exceptions.NotFound):
        compute.get_instance(token_credentials, "dojangkok-ai", ZONE, "other-vm")


def test_ssh_key_entry_added_and_removed_keeping_other_items(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.set_metadata("startup-script", "#!/bin/sh\ntrue")
    gcp_fake.set_metadata("ssh-keys", "alice:ssh-ed25519 AAAAalice alice@laptop")
    entry = "deploy:ssh-ed25519 AAAAdeploy google-ssh {}"
    gcp_fake.plan_operations("POST", r"/setMetadata$", running_polls=2)

    compute.add_ssh_key_entry(token_credentials, "dojangkok-ai", ZONE, INSTANCE, entry)
    metadata = gcp_fake.state.instance.metadata
    assert metadata["ssh-keys"].splitlines() == ["alice:ssh-ed25519 AAAAalice alice@laptop", entry]
    assert metadata["startup-script"] == "#!/bin/sh\ntrue"
    assert gcp_fake.requests_to("POST", r"/zones/[^/]+/operations/[^/]+/wait$")

    compute.add_ssh_key_entry(token_credentials, "dojangkok-ai", ZONE, INSTANCE, entry)
    assert gcp_fake.state.instance.metadata["ssh-keys"].count(entry) == 1

    removed = compute.remove_ssh_key_entries(
        token_credentials, "dojangkok-ai", ZONE, INSTANCE, entry
    )
    assert removed == 1
    assert (
        gcp_fake.state.instance.metadata["ssh-keys"] == "alice:ssh-ed25519 AAAAalice alice@laptop"
    )
    writes = len(gcp_fake.requests_to("POST", r"/setMetadata$"))
    assert (
        compute.remove_ssh_key_entries(token_credentials, "dojangkok-ai", ZONE, INSTANCE, entry)
        == 0
    )
    assert len(gcp_fake.requests_to("POST", r"/setMetadata$")) == writes


def test_metadata_write_retries_once_after_a_concurrent_change(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    def someone_else_writes(request: RecordedRequest) -> None:
        gcp_fake.set_metadata("other", "value")

    gcp_fake.inject("POST", r"/setMetadata$", status=None, before=someone_else_writes)
    compute.add_ssh_key_entry(token_credentials, "dojangkok-ai", ZONE, INSTANCE, "u:ssh-ed25519 A")

    metadata = gcp_fake.state.instance.metadata
    assert metadata == {"other": "value", "ssh-keys": "u:ssh-ed25519 A"}
    first, second = gcp_fake.requests_to("POST", r"/setMetadata$")
    assert first.json()["fingerprint"] != second.json()["fingerprint"]


def test_metadata_write_gives_up_after_its_last_412(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compute.operations, "RETRY_BASE_S", 0.01)
    monkeypatch.setattr(compute.operations, "RETRY_CAP_S", 0.05)

    def someone_else_writes(request: RecordedRequest) -> None:
        gcp_fake.set_metadata("other", request.path)

    attempts = compute.METADATA_WRITE_ATTEMPTS
    gcp_fake.inject(
        "POST", r"/setMetadata$", status=None, before=someone_else_writes, times=attempts - 1
    )
    compute.add_ssh_key_entry(token_credentials, "dojangkok-ai", ZONE, INSTANCE, "u:k A")
    assert gcp_fake.state.instance.metadata["ssh-keys"] == "u:k A"

    gcp_fake.inject(
        "POST", r"/setMetadata$", status=None, before=someone_else_writes, times=attempts
    )
    with pytest.raises(api_exceptions.PreconditionFailed):
        compute.add_ssh_key_entry(token_credentials, "dojangkok-ai", ZONE, INSTANCE, "u:k B")
    assert gcp_fake.state.instance.metadata["ssh-keys"] == "u:k A"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:34:56.789-07:00", datetime(2024, 5, 1, 19, 34, 56, 789000, timezone.utc)),
        ("2024-05-01T12:34:56Z", datetime(2024, 5, 1, 12, 34, 56, tzinfo=timezone.utc)),
        ("2024-05-01T12:34:56.5+00:00", datetime(2024, 5, 1, 12, 34, 56, 500000, timezone.utc)),
        ("", None),
        ("yesterday", None),
    ],
)
def test_parse_timestamp(text: str, expected: datetime | None) -> None:
    assert compute.parse_timestamp(text) == expected
