"""The SSH window under the real API's timing and errors (issue 11, items 1, 2 and 7).

Every case ends the same way: no firewall rule and no ssh-keys entry of the run are left,
whatever happened on the way. Operations take time in the fake (PENDING -> RUNNING -> DONE
whether polled or not), so these are the cases a fake that answers DONE at once never shows.
"""

from __future__ import annotations

import logging
import re
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import compute_v1
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.gcp import Terminated, compute, operations
from ai_deploy.gcp import firewall as firewall_module
from ai_deploy.gcp.firewall import (
    FirewallError,
    firewall_rule_name,
    firewall_window,
    sweep_stale_rules,
    unique_name,
)
from ai_deploy.gcp.permissions import IAP_ROLE_YAML, WINDOW_PERMISSIONS, WINDOW_ROLE_YAML
from ai_deploy.gcp.sshkeys import SshSettings, ephemeral_ssh_key
from tests.fakes.gcp import FakeGcp, RecordedRequest
from tests.gcp.permission_table import compute_permissions

pytestmark = pytest.mark.gcp

PROJECT = "dojangkok-ai"
RUNNER_IP = "203.0.113.7"
ZONE = "asia-northeast3-a"
INSTANCE = "ai-server-prod"
GCP_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
README = Path(__file__).resolve().parents[2] / "README.md"
INSERT = r"/global/firewalls$"
RULE = r"/global/firewalls/[^/]+$"
GLOBAL_WAIT = r"/global/operations/[^/]+/wait$"


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
    monkeypatch.setattr(firewall_module, "LATE_RULE_POLL_S", 0.05)


@pytest.fixture
def slow_fake(gcp_fake: FakeGcp) -> Iterator[FakeGcp]:
    """The fake with operations that take real time, as Compute's do (scaled down)."""
    gcp_fake.operation_seconds = 0.6
    yield gcp_fake
    _settle(gcp_fake)


def _settle(fake: FakeGcp, seconds: float = 5.0) -> None:
    """Wait until no operation is in flight, so a late rule would have appeared."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with fake.lock:
            if all(op.body["status"] == "DONE" for op in fake.state.operations.values()):
                return
        time.sleep(0.05)
    pytest.fail("operations still in flight")


def _nothing_left(fake: FakeGcp) -> None:
    _settle(fake)
    with fake.lock:
        assert fake.state.firewalls == {}, fake.state.firewalls
        assert "ssh-keys" not in fake.state.instance.metadata
        assert not any(fake.state.oslogin_keys.values()), fake.state.oslogin_keys


def _deletes(fake: FakeGcp) -> list[RecordedRequest]:
    return fake.requests_to("DELETE", RULE)


# -- names -----------------------------------------------------------------------------------


def test_names_keep_their_unique_suffix_whatever_the_lengths() -> None:
    env = {"GITHUB_RUN_ID": "9" * 30, "GITHUB_RUN_ATTEMPT": "12"}
    names = {firewall_rule_name("a" * 40, env) for _ in range(50)}
    assert len(names) == 50  # the random part survived the cut in every one
    for name in names:
        assert GCP_NAME.fullmatch(name) and len(name) <= 63
        assert name.startswith("a" * 20)
        assert re.search(r"-[0-9a-f]{4}$", name)
    assert unique_name("x" * 80, "-tail") == unique_name("x" * 80, "-tail")
    cut = unique_name("head-" + "m" * 80 + "-end12", "-beef")
    assert cut.startswith("head-") and cut.endswith("end12-beef") and len(cut) == 63


# -- item 2: the fake behaves like the documented API ----------------------------------------


def test_fake_operations_progress_with_time_and_resources_appear_when_done(
    slow_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    client = compute.compute_client(compute_v1.FirewallsClient, token_credentials)
    name = "ai-deploy-ssh-fake-1234"
    rule = compute_v1.Firewall(
        name=name,
        network="global/networks/default",
        source_ranges=["203.0.113.7/32"],
        target_tags=["ai-server"],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
    )
    request = compute_v1.InsertFirewallRequest(
        project=PROJECT, firewall_resource=rule, request_id="6f1c0e6a-0000-4000-8000-000000000001"
    )
    op = client.insert_unary(request=request)
    assert op.status.name == "PENDING"
    assert compute.get_firewall_rule(token_credentials, PROJECT, name) is None  # 404 meanwhile
    # A retry of the same insert (same requestId) is the same operation, not a 409.
    assert client.insert_unary(request=request).name == op.name
    # Another insert of the name while the first runs: 409, as for an existing rule.
    other = compute_v1.InsertFirewallRequest(project=PROJECT, firewall_resource=rule)
    with pytest.raises(api_exceptions.Conflict):
        client.insert_unary(request=other)
    # A DELETE while the insert runs: 400 resourceNotReady, as Compute answers.
    with pytest.raises(api_exceptions.BadRequest) as refused:
        client.delete_unary(project=PROJECT, firewall=name)
    assert compute.reasons(refused.value) == {"resourceNotReady"}
    time.sleep(0.3)
    with slow_fake.lock:
        assert slow_fake.state.operations[op.name].body["status"] == "RUNNING"
    # Nobody polls; the rule still appears once the operation is DONE.
    time.sleep(0.8)
    with slow_fake.lock:
        assert name in slow_fake.state.firewalls
        assert slow_fake.state.operations[op.name].body["status"] == "DONE"
    compute.delete_firewall_rule(token_credentials, PROJECT, name)
    _nothing_left(slow_fake)


def test_fake_wait_blocks_until_done_or_answers_at_once(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.plan_operations("POST", INSERT, seconds=0.8, times=2)
    ops = compute.compute_client(compute_v1.GlobalOperationsClient, token_credentials)
    firewalls = compute.compute_client(compute_v1.FirewallsClient, token_credentials)

    def insert(name: str) -> compute_v1.Operation:
        rule = compute_v1.Firewall(
            name=name,
            source_ranges=["203.0.113.7/32"],
            allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
        )
        return firewalls.insert_unary(project=PROJECT, firewall_resource=rule)

    began = time.monotonic()
    done = ops.wait(project=PROJECT, operation=insert("blocking-wait").name)
    assert done.status.name == "DONE" and time.monotonic() - began >= 0.5
    gcp_fake.wait_returns_at_once = True
    began = time.monotonic()
    early = ops.wait(project=PROJECT, operation=insert("early-wait").name)
    assert early.status.name != "DONE" and time.monotonic() - began < 0.5
    _settle(gcp_fake)
    for name in ("blocking-wait", "early-wait"):
        compute.delete_firewall_rule(token_credentials, PROJECT, name)
    _nothing_left(gcp_fake)


# -- item 1: every fault on the way in or out ------------------------------------------------

RETRYABLE = [
    pytest.param(403, "rateLimitExceeded", id="403-rateLimitExceeded"),
    pytest.param(403, "userRateLimitExceeded", id="403-userRateLimitExceeded"),
    pytest.param(429, "rateLimitExceeded", id="429"),
    pytest.param(500, "backendError", id="500"),
    pytest.param(503, "backendError", id="503"),
    pytest.param(400, "resourceNotReady", id="400-resourceNotReady"),
]


@pytest.mark.parametrize(("status", "reason"), RETRYABLE)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", INSERT, id="insert"),
        pytest.param("POST", GLOBAL_WAIT, id="operation-wait"),
        pytest.param("DELETE", RULE, id="delete"),
    ],
)
def test_retryable_answers_are_retried_and_the_window_still_closes(
    slow_fake: FakeGcp,
    token_credentials: TokenCredentials,
    method: str,
    path: str,
    status: int,
    reason: str,
) -> None:
    slow_fake.inject(method, path, status=status, reason=reason, times=2)
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window:
        assert window.name in slow_fake.state.firewalls
    calls = slow_fake.requests_to(method, path)
    assert len(calls) >= 3
    if method != "POST" or path == INSERT:
        # Every retry of one mutation carries the same requestId.
        assert len({r.query["requestId"][0] for r in calls}) == 1
    _nothing_left(slow_fake)


def test_insert_accepted_but_answer_lost_is_not_a_conflict(
    slow_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    """The insert took effect but its answer was a 503: the retry, with the same requestId,
    gets the same operation back (no 409, no replace, one rule)."""
    slow_fake.inject("POST", INSERT, status=503, applied=True)
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window:
        assert window.name in slow_fake.state.firewalls
    inserts = slow_fake.requests_to("POST", INSERT)
    assert len(inserts) == 2 and len({r.query["requestId"][0] for r in inserts}) == 1
    assert slow_fake.requests_to("GET", RULE) == []  # nothing was adopted or replaced
    assert len(_deletes(slow_fake)) == 1
    _nothing_left(slow_fake)


def test_timeouts_on_the_insert_and_the_wait_are_retried(
    slow_fake: FakeGcp, token_credentials: TokenCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operations, "CALL_TIMEOUT", 0.5)
    slow_fake.wait_max_s = 0.2  # the server's wait stays shorter than the client's timeout
    slow_fake.inject("POST", INSERT, status=None, delay=0.8)  # applied, answer too late
    slow_fake.inject("POST", GLOBAL_WAIT, status=None, delay=0.8)
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window:
        assert window.name in slow_fake.state.firewalls
    inserts = slow_fake.requests_to("POST", INSERT)
    assert len({r.query["requestId"][0] for r in inserts}) == 1
    _nothing_left(slow_fake)


def test_client_timeout_is_longer_than_the_servers_wait() -> None:
    assert operations.CALL_TIMEOUT > 120


def test_operation_unreadable_is_not_a_refused_insert(
    slow_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    """A role without compute.globalOperations.get: the insert is accepted, every poll
    answers 403. Exit path: FirewallError (exit 12 in the CI flow) naming the missing
    permission, and the rule that did get created is deleted."""
    slow_fake.inject("POST", r"/global/operations/", status=403, reason="forbidden", times=None)
    with (
        pytest.raises(FirewallError) as caught,
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pytest.fail("the block must not run")
    message = str(caught.value)
    assert "compute.globalOperations.get" in message
    assert "accepted" in message
    assert "includedPermissions" in message  # the custom role is printed
    assert len(_deletes(slow_fake)) >= 1
    _nothing_left(slow_fake)


def test_rate_limit_forever_on_the_wait_still_deletes_the_rule(
    slow_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    slow_fake.inject(
        "POST", r"/global/operations/", status=403, reason="rateLimitExceeded", times=None
    )
    with (
        pytest.raises(FirewallError, match="outcome is unknown"),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pytest.fail("the block must not run")
    _nothing_left(slow_fake)


def test_refused_insert_deletes_nothing(
    slow_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    slow_fake.inject("POST", INSERT, status=403, reason="forbidden", message="denied")
    with (
        pytest.raises(FirewallError, match=r"compute\.firewalls\.create"),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pytest.fail("the block must not run")
    assert _deletes(slow_fake) == []
    _nothing_left(slow_fake)


def test_failed_create_does_not_wait_for_a_late_rule(
    slow_fake: FakeGcp, token_credentials: TokenCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firewall_module, "LATE_RULE_POLL_S", 2.0)
    slow_fake.plan_operations(
        "POST",
        INSERT,
        seconds=0.3,
        error={"code": "QUOTA_EXCEEDED", "message": "Quota 'FIREWALLS' exceeded"},
    )
    began = time.monotonic()
    with (
        pytest.raises(FirewallError, match="QUOTA_EXCEEDED"),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pytest.fail("the block must not run")
    assert time.monotonic() - began < 2.0
    assert _deletes(slow_fake) == []
    _nothing_left(slow_fake)


def test_wait_that_returns_at_once_is_polled_with_backoff(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operations, "POLL_BASE_S", 0.1)
    monkeypatch.setattr(operations, "POLL_CAP_S", 0.4)
    gcp_fake.wait_returns_at_once = True
    gcp_fake.plan_operations("POST", INSERT, seconds=2.0)
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP):
        pass
    waits = gcp_fake.requests_to("POST", GLOBAL_WAIT)
    assert len(waits) < 20  # a tight loop makes thousands
    _nothing_left(gcp_fake)


def test_delete_while_the_insert_runs_is_retried_until_the_rule_is_gone(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    """Cancelled during the 5-20 s insert, before its answer came: closing cannot wait for
    an operation it never heard of, so it deletes, retrying resourceNotReady until the
    create is done, and the rule is gone (exit 143 in the CI flow)."""
    gcp_fake.plan_operations("POST", INSERT, seconds=1.0)

    def cancel(request: RecordedRequest) -> None:
        import os

        os.kill(os.getpid(), signal.SIGTERM)

    gcp_fake.inject("POST", INSERT, status=None, before=cancel)
    with (
        pytest.raises(Terminated),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pytest.fail("the block must not run")
    reasons = [r.path for r in _deletes(gcp_fake)]
    assert reasons  # at least one delete, the first ones answered resourceNotReady
    _nothing_left(gcp_fake)


def test_signal_while_waiting_for_the_insert_waits_for_it_then_deletes(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.plan_operations("POST", INSERT, seconds=1.0)

    def cancel(request: RecordedRequest) -> None:
        import os

        os.kill(os.getpid(), signal.SIGINT)

    gcp_fake.inject("POST", GLOBAL_WAIT, status=None, before=cancel)
    with (
        pytest.raises(Terminated),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pytest.fail("the block must not run")
    deletes = _deletes(gcp_fake)
    assert len(deletes) == 1  # it waited for the create, so the first delete found the rule
    _nothing_left(gcp_fake)


def test_ssh_key_entry_added_while_interrupted_is_removed(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    """The setMetadata operation still running when the run is cancelled: closing waits for
    it, so the removal sees the entry (else the entry would land after the removal)."""
    gcp_fake.plan_operations("POST", r"/setMetadata$", seconds=1.0)

    def cancel(request: RecordedRequest) -> None:
        import os

        os.kill(os.getpid(), signal.SIGTERM)

    gcp_fake.inject("POST", r"/zones/[^/]+/operations/[^/]+/wait$", status=None, before=cancel)
    settings = SshSettings(mode="metadata", user="deploy")
    with (
        pytest.raises(Terminated),
        ephemeral_ssh_key(
            token_credentials, PROJECT, zone=ZONE, instance=INSTANCE, settings=settings
        ),
    ):
        pytest.fail("the block must not run")
    _nothing_left(gcp_fake)


def test_ssh_key_writes_carry_a_request_id_and_retry_rate_limits(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    gcp_fake.inject("POST", r"/setMetadata$", status=403, reason="rateLimitExceeded", times=2)
    settings = SshSettings(mode="metadata", user="deploy")
    with ephemeral_ssh_key(
        token_credentials, PROJECT, zone=ZONE, instance=INSTANCE, settings=settings
    ):
        assert "ssh-keys" in gcp_fake.state.instance.metadata
    writes = gcp_fake.requests_to("POST", r"/setMetadata$")
    assert all(r.query.get("requestId") for r in writes)
    assert len({r.query["requestId"][0] for r in writes[:3]}) == 1
    _nothing_left(gcp_fake)


# -- signals to a whole process, as GitHub sends them on cancel ------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from ai_deploy.gcp import Terminated
    from ai_deploy.gcp.auth import load_credentials
    from ai_deploy.gcp.firewall import firewall_window

    session = load_credentials()
    print("STARTING", flush=True)
    try:
        with firewall_window(session.credentials, session.project, source_ip="203.0.113.7") as w:
            print("READY", w.name, flush=True)
            time.sleep(60)
    except Terminated as exc:
        print("TERMINATED", exc.signum, flush=True)
        sys.exit(exc.exit_code)
    """
)


def _wait_for_insert(fake: FakeGcp, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inserts = fake.requests_to("POST", INSERT)
        if inserts:
            return str(inserts[0].json()["name"])
        time.sleep(0.02)
    pytest.fail("the child never inserted a rule")


@pytest.fixture
def child_env(
    gcp_fake: FakeGcp,
    github_workload_identity: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> FakeGcp:
    github_workload_identity()
    monkeypatch.setenv("GITHUB_RUN_ID", "5150")
    monkeypatch.setenv("GITHUB_RUN_ATTEMPT", "1")
    return gcp_fake


def test_sigterm_while_the_insert_runs_leaves_no_rule(
    child_env: FakeGcp, child_python: Callable[[str], Any]
) -> None:
    fake = child_env
    fake.plan_operations("POST", INSERT, seconds=3.0)
    child = child_python(CHILD)
    name = _wait_for_insert(fake)
    time.sleep(0.3)
    with fake.lock:
        assert fake.operation_in_flight(f"/global/firewalls/{name}", "insert")
    child.proc.send_signal(signal.SIGTERM)
    code = child.finish(timeout=60)
    assert code == 128 + signal.SIGTERM, child.text
    _nothing_left(fake)
    assert [r.path.rsplit("/", 1)[1] for r in _deletes(fake)] == [name]


@pytest.mark.parametrize("next_one", ["attempt", "run"])
def test_sigint_sigterm_sigkill_while_the_insert_runs_is_swept_by_the_next_attempt(
    child_env: FakeGcp,
    child_python: Callable[[str], Any],
    token_credentials: TokenCredentials,
    monkeypatch: pytest.MonkeyPatch,
    next_one: str,
) -> None:
    """GitHub's cancel: SIGINT, SIGTERM, then SIGKILL. The child, waiting for the insert to
    end so it can delete the rule, is killed first: the rule appears afterwards. The next
    attempt of the run, or the next run (which asks GitHub whether the rule's run is over),
    deletes it at its start (no 60-minute wait: the rule says which run and attempt made it),
    and leaves nothing itself."""
    fake = child_env
    fake.plan_operations("POST", INSERT, seconds=4.0)
    child = child_python(CHILD)
    name = _wait_for_insert(fake)
    time.sleep(0.3)
    for signum in (signal.SIGINT, signal.SIGTERM):
        child.proc.send_signal(signum)
        time.sleep(0.5)
    child.proc.kill()
    child.finish(timeout=30)
    _settle(fake)
    with fake.lock:
        leftover = fake.state.firewalls[name]
    assert "ai-deploy-run=5150-1" in leftover["description"]
    assert "ai-deploy-expires=" in leftover["description"]

    if next_one == "attempt":
        monkeypatch.setenv("GITHUB_RUN_ATTEMPT", "2")
    else:
        monkeypatch.setenv("GITHUB_RUN_ID", "5151")
        for key, value in fake.github_api_env().items():
            monkeypatch.setenv(key, value)
        with fake.lock:
            fake.state.github_runs["5150"] = "completed"
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window, fake.lock:
        assert set(fake.state.firewalls) == {window.name}
    _nothing_left(fake)
    if next_one == "run":
        (asked,) = fake.requests_to("GET", r"/actions/runs/")
        assert asked.path.endswith("/repos/dojangkok/ai-server/actions/runs/5150")
        assert asked.authorization == f"Bearer {fake.state.github_token}"


def test_sweep_asks_github_about_other_runs_and_keeps_what_it_cannot_tell(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    """Another run's live rule goes only when GitHub says that run is completed; a run still
    in progress, one GitHub does not know, or no token: the rule waits for its expiry."""
    later = datetime.now(timezone.utc) + timedelta(minutes=50)

    def marks(run: str) -> str:
        return f"x; ai-deploy-run={run} ai-deploy-expires={later:%Y-%m-%dT%H:%M:%SZ}"

    for run in ("10", "11", "12"):
        gcp_fake.add_firewall(f"ai-deploy-ssh-{run}-1-aaaa", description=marks(f"{run}-1"))
    with gcp_fake.lock:
        gcp_fake.state.github_runs.update({"10": "completed", "11": "in_progress"})
    env = {"GITHUB_RUN_ID": "20", "GITHUB_RUN_ATTEMPT": "1"}

    # Without GITHUB_TOKEN nothing is asked and nothing goes.
    assert sweep_stale_rules(token_credentials, PROJECT, environ=env) == []
    assert not gcp_fake.requests_to("GET", r"/actions/runs/")
    # A token for an http address that is not loopback is never sent.
    leaky = {**env, **gcp_fake.github_api_env(), "GITHUB_API_URL": "http://api.invalid"}
    assert sweep_stale_rules(token_credentials, PROJECT, environ=leaky) == []

    swept = sweep_stale_rules(
        token_credentials, PROJECT, environ={**env, **gcp_fake.github_api_env()}
    )
    assert swept == ["ai-deploy-ssh-10-1-aaaa"]
    assert set(gcp_fake.state.firewalls) == {"ai-deploy-ssh-11-1-aaaa", "ai-deploy-ssh-12-1-aaaa"}
    # Each run asked once; a wrong token is a warning, not a deletion.
    assert len(gcp_fake.requests_to("GET", r"/actions/runs/")) == 3
    with gcp_fake.lock:
        gcp_fake.state.github_runs["11"] = "completed"
    wrong = {**env, **gcp_fake.github_api_env(), "GITHUB_TOKEN": "ghs-wrong"}
    assert sweep_stale_rules(token_credentials, PROJECT, environ=wrong) == []


def test_sweep_deletes_expired_rules_and_keeps_live_ones(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    now = datetime.now(timezone.utc)

    def marks(run: str, expires: datetime) -> str:
        return f"x; ai-deploy-run={run} ai-deploy-expires={expires:%Y-%m-%dT%H:%M:%SZ}"

    gcp_fake.add_firewall("ai-deploy-ssh-1-1-aaaa", description=marks("1-1", now - timedelta(1)))
    gcp_fake.add_firewall(
        "ai-deploy-ssh-2-1-bbbb", description=marks("2-1", now + timedelta(minutes=30))
    )
    gcp_fake.add_firewall(
        "ai-deploy-ssh-7-1-cccc", description=marks("7-1", now + timedelta(minutes=30))
    )
    gcp_fake.add_firewall(
        "ai-deploy-ssh-7-2-dddd", description=marks("7-2", now + timedelta(minutes=30))
    )
    swept = sweep_stale_rules(
        token_credentials,
        PROJECT,
        environ={"GITHUB_RUN_ID": "7", "GITHUB_RUN_ATTEMPT": "2"},
    )
    # Expired; and an earlier attempt of this run (over, though not expired). Another run's
    # live rule and this attempt's other job's rule stay.
    assert sorted(swept) == ["ai-deploy-ssh-1-1-aaaa", "ai-deploy-ssh-7-1-cccc"]
    assert set(gcp_fake.state.firewalls) == {"ai-deploy-ssh-2-1-bbbb", "ai-deploy-ssh-7-2-dddd"}


# -- item 7: priority, default-allow-ssh, the custom role ------------------------------------


def test_rule_has_an_explicit_priority(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    with firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP) as window:
        assert gcp_fake.state.firewalls[window.name]["priority"] == 900
    body = gcp_fake.requests_to("POST", INSERT)[0].json()
    assert body["priority"] == 900


def test_default_allow_ssh_is_warned_about(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    gcp_fake.add_firewall(
        "default-allow-ssh", source_ranges=["0.0.0.0/0"], target_tags=[], priority=65534
    )
    gcp_fake.add_firewall("office-ssh", source_ranges=["198.51.100.0/24"], target_tags=[])
    with (
        caplog.at_level(logging.WARNING),
        firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP),
    ):
        pass
    assert "default-allow-ssh already lets 0.0.0.0/0 reach tcp:22" in caplog.text
    assert "office-ssh" not in caplog.text


def _readme_role() -> str:
    text = README.read_text()
    match = re.search(r"```yaml\n(title: ai-deploy SSH window\n.*?)```", text, re.S)
    assert match, "README has no custom role block"
    return match.group(1)


def test_custom_role_in_the_readme_is_exactly_what_the_window_mode_calls_need(
    slow_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    assert _readme_role() == WINDOW_ROLE_YAML
    assert f"```yaml\n{IAP_ROLE_YAML}```" in README.read_text()
    listed = set(re.findall(r"^- (\S+)$", _readme_role(), re.M))
    assert listed == set(WINDOW_PERMISSIONS)

    def window_mode_run(rule_name: str | None = None) -> None:
        settings = SshSettings(mode="metadata", user="deploy")
        with (
            firewall_window(token_credentials, PROJECT, source_ip=RUNNER_IP, rule_name=rule_name),
            ephemeral_ssh_key(
                token_credentials, PROJECT, zone=ZONE, instance=INSTANCE, settings=settings
            ),
        ):
            pass

    window_mode_run()
    # A re-run that finds its own rule (an earlier try of the same create) reads it.
    slow_fake.add_firewall("ai-deploy-ssh-77-1-beef", source_ranges=[f"{RUNNER_IP}/32"])
    window_mode_run("ai-deploy-ssh-77-1-beef")
    # The window and the key alone; the whole deploy (host keys, OS Login check) is compared
    # with the role in test_gcp_deploy_flow's full flow.
    used = compute_permissions(slow_fake.requests)
    assert used <= set(WINDOW_PERMISSIONS)
    assert set(WINDOW_PERMISSIONS) - used == {
        "compute.instances.getGuestAttributes",
        "compute.projects.get",
    }
    _nothing_left(slow_fake)
