"""The firewall window: created before the block, deleted on every way out of it."""

from __future__ import annotations

import logging
import os
import re
import signal
import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.gcp import Terminated, operations
from ai_deploy.gcp.firewall import (
    FirewallError,
    firewall_rule_name,
    firewall_window,
    sweep_stale_rules,
)
from tests.fakes.gcp import FakeGcp, RecordedRequest

pytestmark = pytest.mark.gcp

PROJECT = "dojangkok-ai"
RUNNER_IP = "203.0.113.7"
GCP_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries and polls keep their shape (exponential, jittered) at a test's time scale."""
    for name, value in (
        ("RETRY_BASE_S", 0.01),
        ("RETRY_CAP_S", 0.05),
        ("POLL_BASE_S", 0.01),
        ("POLL_CAP_S", 0.05),
    ):
        monkeypatch.setattr(operations, name, value)


def _deletes(fake: FakeGcp) -> list[RecordedRequest]:
    return fake.requests_to("DELETE", r"/global/firewalls/")


def test_rule_name_is_unique_per_run_and_attempt() -> None:
    first = firewall_rule_name(environ={"GITHUB_RUN_ID": "9876543210", "GITHUB_RUN_ATTEMPT": "1"})
    rerun = firewall_rule_name(environ={"GITHUB_RUN_ID": "9876543210", "GITHUB_RUN_ATTEMPT": "2"})
    assert first.startswith("ai-deploy-ssh-9876543210-1-")
    assert rerun.startswith("ai-deploy-ssh-9876543210-2-")
    local = {firewall_rule_name(environ={}) for _ in range(20)}
    assert len(local) == 20
    for name in [first, rerun, *local]:
        assert GCP_NAME.fullmatch(name) and len(name) <= 63
    long = firewall_rule_name("a" * 40, {"GITHUB_RUN_ID": "9" * 30, "GITHUB_RUN_ATTEMPT": "3"})
    assert GCP_NAME.fullmatch(long) and len(long) <= 63
    for bad in ("Ai-deploy-", "1-deploy-", "ai_deploy-", "a" * 41):
        with pytest.raises(ValueError):
            firewall_rule_name(bad, {})


def test_window_opens_for_the_runner_and_closes_after_success(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    env = {"GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "3"}
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP, environ=env) as window:
        assert window.name.startswith("ai-deploy-ssh-4242-3-")
        rule = gcp_fake.state.firewalls[window.name]
        assert rule["sourceRanges"] == [f"{RUNNER_IP}/32"]
        assert rule["targetTags"] == ["ai-server"]
        assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
        assert rule["network"].endswith("/projects/dojangkok-ai/global/networks/default")
        assert "run 4242 attempt 3" in rule["description"]
        assert signal.getsignal(signal.SIGTERM) not in previous
    assert gcp_fake.state.firewalls == {}
    assert len(_deletes(gcp_fake)) == 1
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous


def test_exception_right_after_creation_deletes_the_rule(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    with (
        pytest.raises(Boom),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window,
    ):
        assert window.name in gcp_fake.state.firewalls
        raise Boom
    assert gcp_fake.state.firewalls == {}
    assert [r.path.rsplit("/", 1)[1] for r in _deletes(gcp_fake)] == [window.name]


def test_create_and_delete_operations_running_first_are_waited_for(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.plan_operations("POST", r"/global/firewalls$", running_polls=3)
    gcp_fake.plan_operations("DELETE", r"/global/firewalls/", running_polls=2)
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window:
        # Inside the block the create operation is DONE, so the rule exists.
        assert window.name in gcp_fake.state.firewalls
    assert gcp_fake.state.firewalls == {}
    assert len(gcp_fake.requests_to("POST", r"/global/operations/[^/]+/wait$")) == 5


def test_stale_rules_are_swept_before_creating(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    now = datetime.now(timezone.utc)
    gcp_fake.add_firewall("ai-deploy-ssh-111-1-abcd", created=now - timedelta(hours=5))
    gcp_fake.add_firewall("ai-deploy-ssh-222-1-abcd", created=now - timedelta(minutes=10))
    gcp_fake.add_firewall("default-allow-ssh", created=now - timedelta(days=400))
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window:
        names = set(gcp_fake.state.firewalls)
        assert names == {window.name, "ai-deploy-ssh-222-1-abcd", "default-allow-ssh"}
    assert set(gcp_fake.state.firewalls) == {"ai-deploy-ssh-222-1-abcd", "default-allow-ssh"}


def test_sweep_age_is_configurable_and_failures_do_not_block(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    gcp_fake.add_firewall(
        "ai-deploy-ssh-1", created=datetime.now(timezone.utc) - timedelta(minutes=10)
    )
    assert sweep_stale_rules(token_credentials, PROJECT, older_than=timedelta(minutes=5)) == [
        "ai-deploy-ssh-1"
    ]
    gcp_fake.inject("GET", r"/global/firewalls$", status=403, reason="forbidden")
    with (
        caplog.at_level(logging.WARNING),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pass
    assert "compute.firewalls.list" in caplog.text
    assert gcp_fake.state.firewalls == {}


def test_existing_rule_of_the_same_name_is_reused_and_then_deleted(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    name = "ai-deploy-ssh-77-1-beef"
    gcp_fake.add_firewall(name, source_ranges=[f"{RUNNER_IP}/32"])
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP, rule_name=name):
        assert gcp_fake.state.firewalls[name]["sourceRanges"] == [f"{RUNNER_IP}/32"]
    assert len(gcp_fake.requests_to("POST", r"/global/firewalls$")) == 1  # the 409
    assert gcp_fake.state.firewalls == {}


def test_existing_rule_with_other_settings_is_replaced(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    name = "ai-deploy-ssh-77-1-beef"
    gcp_fake.add_firewall(name, source_ranges=["198.51.100.1/32"])
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP, rule_name=name):
        assert gcp_fake.state.firewalls[name]["sourceRanges"] == [f"{RUNNER_IP}/32"]
    assert gcp_fake.state.firewalls == {}


def test_already_exists_from_the_operation_is_handled(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    name = "ai-deploy-ssh-77-1-beef"
    gcp_fake.add_firewall(name, source_ranges=[f"{RUNNER_IP}/32"])
    gcp_fake.inject(
        "POST",
        r"/global/firewalls$",
        status=None,
        before=lambda request: gcp_fake.state.firewalls.pop(name),
    )
    gcp_fake.plan_operations(
        "POST",
        r"/global/firewalls$",
        error={"code": "RESOURCE_ALREADY_EXISTS", "message": "exists", "http_status": 409},
    )
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP, rule_name=name):
        assert gcp_fake.state.firewalls[name]["sourceRanges"] == [f"{RUNNER_IP}/32"]
    assert gcp_fake.state.firewalls == {}


def test_forbidden_create_names_the_missing_permission(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.inject(
        "POST",
        r"/global/firewalls$",
        status=403,
        reason="forbidden",
        message="Required 'compute.firewalls.create' permission for "
        "'projects/dojangkok-ai/global/firewalls/ai-deploy-ssh-x'",
    )
    entered = False
    with (
        pytest.raises(FirewallError) as caught,
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        entered = True
    assert not entered
    message = str(caught.value)
    assert "compute.firewalls.create" in message
    assert "roles/compute.securityAdmin" in message
    assert _deletes(gcp_fake) == []
    assert gcp_fake.state.firewalls == {}


def test_compute_api_disabled_says_to_enable_it(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.inject(
        "POST",
        r"/global/firewalls$",
        status=403,
        reason="accessNotConfigured",
        message="Compute Engine API has not been used in project 123 before or it is disabled.",
    )
    with (
        pytest.raises(FirewallError, match=r"enable compute\.googleapis\.com"),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pass


def test_failed_create_operation_still_cleans_up(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.plan_operations(
        "POST",
        r"/global/firewalls$",
        running_polls=1,
        error={
            "code": "QUOTA_EXCEEDED",
            "message": "Quota 'FIREWALLS' exceeded",
            "http_status": 403,
        },
    )
    with (
        pytest.raises(FirewallError, match="QUOTA_EXCEEDED"),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pytest.fail("the block must not run")
    # DONE with an error: no rule was made, so nothing to delete and no wait for a late one.
    assert _deletes(gcp_fake) == []
    assert gcp_fake.requests_to("GET", r"/global/firewalls/") == []
    assert gcp_fake.state.firewalls == {}


def test_delete_failure_after_success_is_an_error_with_the_manual_command(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.inject("DELETE", r"/global/firewalls/", status=503, times=None)
    with (
        pytest.raises(FirewallError, match="gcloud compute firewall-rules delete") as caught,
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window,
    ):
        pass
    assert window.name in str(caught.value)
    assert len(_deletes(gcp_fake)) == operations.RETRY_ATTEMPTS  # retried, one requestId
    assert len({r.query["requestId"][0] for r in _deletes(gcp_fake)}) == 1


def test_delete_failure_does_not_hide_the_original_error(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    gcp_fake.inject("DELETE", r"/global/firewalls/", status=403, reason="forbidden", times=None)
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(Boom),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        raise Boom
    assert "compute.firewalls.delete" in caplog.text


@pytest.mark.parametrize("address", ["203.0.113.7/32", "2001:db8::1", "<html>", ""])
def test_bad_runner_address_stops_before_any_request(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, address: str
) -> None:
    with (
        pytest.raises(FirewallError),
        firewall_window(token_credentials, PROJECT, source_ip=address),
    ):
        pass
    assert gcp_fake.requests == []


def test_signal_during_the_delete_waits_for_it(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    def interrupt(request: RecordedRequest) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    gcp_fake.inject("DELETE", r"/global/firewalls/", status=None, before=interrupt)
    gcp_fake.plan_operations("DELETE", r"/global/firewalls/", running_polls=2)
    previous = signal.getsignal(signal.SIGTERM)
    with (
        pytest.raises(Terminated) as caught,
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pass
    assert caught.value.signum == signal.SIGTERM
    assert gcp_fake.state.firewalls == {}
    assert signal.getsignal(signal.SIGTERM) == previous


CHILD = textwrap.dedent(
    """
    import sys, time
    from ai_deploy.gcp import Terminated
    from ai_deploy.gcp.auth import load_credentials
    from ai_deploy.gcp.firewall import firewall_window

    session = load_credentials()
    try:
        with firewall_window(session.credentials, session.project, source_ip="203.0.113.7") as w:
            print("READY", w.name, flush=True)
            time.sleep(60)
    except Terminated as exc:
        print("TERMINATED", exc.signum, flush=True)
        sys.exit(exc.exit_code)
    print("NOT INTERRUPTED", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_a_process_inside_the_window_deletes_the_rule(
    gcp_fake: FakeGcp,
    github_workload_identity: Callable[..., Path],
    child_python: Callable[[str], Any],
    monkeypatch: pytest.MonkeyPatch,
    signum: signal.Signals,
) -> None:
    github_workload_identity()
    monkeypatch.setenv("GITHUB_RUN_ID", "5150")
    monkeypatch.setenv("GITHUB_RUN_ATTEMPT", "1")
    child = child_python(CHILD)
    name = child.wait_for_line("READY").split()[1]
    assert name.startswith("ai-deploy-ssh-5150-1-")
    assert name in gcp_fake.state.firewalls

    child.proc.send_signal(signum)
    code = child.finish()

    assert code == 128 + signum, child.text
    assert f"TERMINATED {int(signum)}" in child.text
    assert gcp_fake.state.firewalls == {}
    assert [r.path.rsplit("/", 1)[1] for r in _deletes(gcp_fake)] == [name]
    # The child's Compute calls carried the impersonated token.
    compute_calls = [r for r in gcp_fake.requests if r.path.startswith("/compute/")]
    tokens = {r.authorization.removeprefix("Bearer ") for r in compute_calls}  # type: ignore[union-attr]
    assert {gcp_fake.state.tokens[t]["who"] for t in tokens} == {gcp_fake.state.service_account}
