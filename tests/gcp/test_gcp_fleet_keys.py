"""`fleet_ssh_keys` against the loopback Compute fake with the real client library: grants and
removals on many instances at once (counted as operations in flight in the fake, not timed),
a removal that other writers keep racing past its retries, and which ssh-keys lines count as
leftovers of runs that are over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.ci.connect.fleet_access import _SshPhaseOnExit
from ai_deploy.ci.options import PhaseFailed
from ai_deploy.gcp import operations
from ai_deploy.gcp.fleetkeys import MAX_WORKERS, fleet_ssh_keys
from ai_deploy.gcp.keypair import generate_key_pair, ssh_keys_entry
from ai_deploy.gcp.runkeys import LeftoverKeys, RunMark
from ai_deploy.gcp.sshkeys import SshAccess, SshKeyError, SshSettings
from ai_deploy.rollout import exitcodes
from tests.fakes.gcp import FakeGcp, RecordedRequest
from tests.gcp.flowkit_keys import METADATA_SECONDS, ZONE, instance_names

pytestmark = pytest.mark.gcp

MARK = RunMark("ai-server", "6001-1")
PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK22k22k22k22k22k22k22k22k22k22k22k22k22k22"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("RETRY_BASE_S", 0.01), ("RETRY_CAP_S", 0.05), ("POLL_BASE_S", 0.01)):
        monkeypatch.setattr(operations, name, value)


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[Path, str]:
    return generate_key_pair(tmp_path, comment="ai-deploy@rollout")


def _fleet(fake: FakeGcp, count: int) -> list[tuple[str, str]]:
    for name in instance_names(count):
        fake.add_instance(name, ZONE, tags=["ai-server"])
    return [(name, ZONE) for name in instance_names(count)]


def _keyed(fake: FakeGcp) -> list[str]:
    with fake.lock:
        return sorted(i.name for i in fake.state.all_instances() if "ssh-keys" in i.metadata)


KeysOf = Callable[[list[tuple[str, str]]], AbstractContextManager[SshAccess]]


@pytest.fixture
def keys_of(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, key_pair: tuple[Path, str]
) -> KeysOf:
    def open_keys(targets: list[tuple[str, str]]) -> AbstractContextManager[SshAccess]:
        return fleet_ssh_keys(
            token_credentials,
            gcp_fake.state.project,
            targets,
            settings=SshSettings(),
            key_pair=key_pair,
            mark=MARK,
            environ={},
        )

    return open_keys


@pytest.mark.parametrize("count", [3, 30])
def test_keys_for_30_instances_go_out_and_back_as_many_at_once_as_the_pool_allows(
    gcp_fake: FakeGcp, keys_of: KeysOf, count: int
) -> None:
    targets = _fleet(gcp_fake, count)
    # Compute's own duration: every write of a wave overlaps the others even on a busy machine.
    gcp_fake.plan_operations("POST", r"/setMetadata$", seconds=METADATA_SECONDS, times=None)

    with keys_of(targets) as access:
        assert access.user == "ai-deploy"
        assert _keyed(gcp_fake) == [name for name, _ in targets]
        granting = gcp_fake.max_in_flight("setMetadata")

    assert granting == min(count, MAX_WORKERS)
    # The removals too: as many at once (counted over grants and removals alike).
    assert gcp_fake.max_in_flight("setMetadata") == min(count, MAX_WORKERS)
    assert _keyed(gcp_fake) == []


def test_a_removal_raced_past_its_retries_is_named_and_fails_the_ssh_phase(
    gcp_fake: FakeGcp, keys_of: KeysOf
) -> None:
    targets = _fleet(gcp_fake, 3)

    def other_writer(request: RecordedRequest) -> None:
        items = {i["key"]: i.get("value", "") for i in (request.json() or {}).get("items", [])}
        if "aiDeployRun" not in items.get("ssh-keys", ""):  # a removal: raced every time
            gcp_fake.set_metadata("startup-script", "echo hi", instance="k22-02")

    with pytest.raises(PhaseFailed) as failed, _SshPhaseOnExit(keys_of(targets)):
        gcp_fake.inject(
            "POST", r"/k22-02/setMetadata$", status=None, before=other_writer, times=None
        )

    assert failed.value.phase == "ssh"
    assert exitcodes.PHASE_EXIT["ssh"] == 13
    assert isinstance(failed.value.__cause__, SshKeyError)
    assert "run key left on instance k22-02" in str(failed.value)
    assert "412" in str(failed.value)
    assert _keyed(gcp_fake) == ["k22-02"]
    with gcp_fake.lock:
        assert gcp_fake.state.instance_named("k22-02").metadata["startup-script"] == "echo hi"


def _line(mark: RunMark | None, expires_in: timedelta, user: str = "ai-deploy") -> str:
    expire = datetime.now(timezone.utc) + expires_in
    return ssh_keys_entry(user, PUBLIC, expire, mark.fields() if mark else None)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                           capture_output=True, check=True)  # fmt: skip
    return int(child.stdout)


def test_leftovers_are_this_deployments_keys_of_runs_that_are_over_and_nothing_else(
    gcp_fake: FakeGcp,
) -> None:
    hour = timedelta(hours=1)
    with gcp_fake.lock:
        gcp_fake.state.github_runs.update({"5999": "completed", "6002": "in_progress"})
    leftovers = LeftoverKeys(MARK, gcp_fake.github_api_env())
    host = socket.gethostname()
    now = datetime.now(timezone.utc)
    over = {
        "expired": _line(RunMark("ai-server", "6002-1"), -hour),
        "earlier attempt": _line(RunMark("ai-server", "6001-0"), hour),
        "completed run": _line(RunMark("ai-server", "5999-1"), hour),
        "gone process": _line(RunMark("ai-server", f"local-{host}-{_dead_pid()}"), hour),
    }
    kept = {
        "this run": _line(MARK, hour),
        "this run, expired": _line(MARK, -hour),
        "run in progress": _line(RunMark("ai-server", "6002-1"), hour),
        "unknown run": _line(RunMark("ai-server", "7777-1"), hour),
        "another deployment, over": _line(RunMark("other-app", "5999-1"), -hour),
        "a user's own key": "alice:" + PUBLIC + " alice@laptop",
        "a user's own expiring key": _line(None, -hour, user="alice"),
        "live process": _line(RunMark("ai-server", f"local-{host}-{os.getpid()}"), hour),
        "another machine": _line(RunMark("ai-server", "local-elsewhere-1"), hour),
    }
    assert {what: leftovers.why(line, now) is not None for what, line in over.items()} == {
        what: True for what in over
    }
    assert {what: leftovers.why(line, now) for what, line in kept.items()} == {
        what: None for what in kept
    }
