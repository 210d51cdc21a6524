"""`ai-deploy deploy` over a label fleet of ten `k22-` instances, stopped at each key phase, with
setMetadata operations that take 8 s as Compute's do: the real google-auth and
google-cloud-compute libraries against the loopback Compute fake, the deploy a child process.

No sandbox host: SSH to the instances is refused (nothing listens), so a run waits for SSH
until it is stopped; what is asserted is the fake's state once every operation ended. "The
next run" is a plain deploy of a new GitHub run (the stopped one completed, as GitHub says of a
cancelled run) stopped with one SIGTERM once its keys are on every instance: its grants are
what sweeps the leftovers of runs that are over, its close removes its own keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from ai_deploy.artifact.build import build_artifact
from tests.fakes.gcp import FakeGcp, RecordedRequest
from tests.gcp.conftest import WorkloadIdentity
from tests.gcp.flowkit import REPO_ROOT
from tests.gcp.flowkit_keys import (
    METADATA_SECONDS,
    SET_METADATA,
    ZONE,
    KeyFleet,
    entries_of,
    github_cancel,
    key_fleet,
    run_of,
    wait_for,
)

pytestmark = [pytest.mark.gcp]

USER_KEY = (
    "alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceOwnKeyNotTheRunsAAAAAAAAAAAAAAAAAAAA "
    "alice@laptop"
)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    path = tmp_path_factory.mktemp("k22")
    env_file = path / "ai-server.env"
    env_file.write_text("MODEL_LOAD_SECONDS=1\n")
    built = build_artifact(
        REPO_ROOT / "examples" / "ai-server", path, artifact_id=f"k22-{secrets.token_hex(4)}"
    )
    return built, env_file


@pytest.fixture
def make_fleet(
    gcp_fake: FakeGcp,
    github_workload_identity: WorkloadIdentity,
    artifact: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[int], KeyFleet]]:
    github_workload_identity()
    gcp_fake.operation_seconds = 0.5
    with ExitStack() as stack:

        def make(count: int) -> KeyFleet:
            return stack.enter_context(key_fleet(gcp_fake, count, *artifact, monkeypatch))

        yield make


def _stop_on_guest_read(fleet: KeyFleet, instance: str, change: Callable[[], None]) -> None:
    """CHANGE the fake when the deploy reads INSTANCE's host keys: after the listing, before
    any key is granted."""

    def before(request: RecordedRequest) -> None:
        with fleet.fake.lock:
            change()

    path = rf"/instances/{instance}/getGuestAttributes"
    fleet.fake.inject("GET", path, status=None, before=before)


def _becomes(fleet: KeyFleet, instance: str, status: str) -> Callable[[], None]:
    def change() -> None:
        fleet.fake.state.instance_named(instance).status = status

    return change


def _next_run_sweeps(fleet: KeyFleet, run_id: str, kept: dict[str, str] | None = None) -> None:
    """A new run up to its keys on every RUNNING instance, then one SIGTERM; nothing is left
    but KEPT (instance -> ssh-keys value that is not a run's)."""
    with fleet.fake.lock:
        running = [i.name for i in fleet.fake.state.other_instances if i.status == "RUNNING"]
    process = fleet.start(run_id)

    def granted() -> bool:
        with fleet.fake.lock:
            values = {
                i.name: i.metadata.get("ssh-keys", "") for i in fleet.fake.state.other_instances
            }
        return all(
            any(run_of(line) == f"{run_id}-1" for line in entries_of(values[name]))
            for name in running
        )

    assert wait_for(granted, 120), process.output
    process.terminate()
    code = fleet.finish(process, run_id)
    assert code == 143, process.output
    rules, keys = fleet.left()
    assert rules == [], f"rules left after the next run: {rules}\n{process.output}"
    assert keys == (kept or {}), f"keys left after the next run: {keys}\n{process.output}"


@pytest.mark.parametrize("phase", ["grants", "ssh-wait", "removals"])
def test_github_cancel_at_each_key_phase_leaves_nothing_after_the_next_run(
    make_fleet: Callable[[int], KeyFleet], phase: str
) -> None:
    fleet = make_fleet(10)
    fleet.fake.plan_operations("POST", SET_METADATA, seconds=METADATA_SECONDS, times=None)
    if phase == "removals":  # one instance stops after the listing: the grant fails, keys go
        _stop_on_guest_read(fleet, "k22-10", _becomes(fleet, "k22-10", "STOPPING"))
    process = fleet.start("5001")
    if phase == "grants":
        fleet.wait_for_requests(10)
    elif phase == "ssh-wait":
        assert wait_for(lambda: len(fleet.keyed()) == 10, 120), process.output
    else:
        fleet.wait_for_requests(9 + 3)  # nine adds, then the removals began
    code = github_cancel(process)
    fleet.finish(process, "5001")
    assert code in (130, 143, None), process.output
    rules, keys = fleet.left()
    print(f"left by the cancelled run: rules {rules}, keys on {sorted(keys)}")

    _next_run_sweeps(fleet, "5002")


def test_sigterm_in_the_answer_window_of_an_add_leaves_nothing(
    make_fleet: Callable[[int], KeyFleet],
) -> None:
    fleet = make_fleet(10)
    fleet.fake.plan_operations("POST", SET_METADATA, seconds=METADATA_SECONDS, times=None)
    # Compute accepts k22-03's add at once; its answer leaves 4 s later.
    fleet.fake.inject("POST", r"/instances/k22-03/setMetadata$", status=None, answer_delay=4.0)
    process = fleet.start("5101")
    assert wait_for(
        lambda: fleet.fake.requests_to("POST", r"/instances/k22-03/setMetadata$"), 120
    ), process.output
    wait_for(lambda: False, 1.0)  # into the answer window
    process.terminate()
    code = fleet.finish(process, "5101")

    assert code == 143, process.output
    rules, keys = fleet.left()
    assert rules == [] and keys == {}, (rules, keys, process.output)


@pytest.mark.parametrize("conflicts", [2, 4, 6])
def test_another_writer_during_a_removal_never_costs_a_users_key_and_our_key_goes(
    make_fleet: Callable[[int], KeyFleet], conflicts: int
) -> None:
    """Another writer changes k22-05's ssh-keys (adds a user's own key) between each of our
    reads and writes CONFLICTS times in a row (each write answered 412 conditionNotMet)."""
    fleet = make_fleet(10)
    fleet.fake.plan_operations("POST", SET_METADATA, seconds=1.0, times=None)
    _stop_on_guest_read(fleet, "k22-10", _becomes(fleet, "k22-10", "STOPPING"))
    seen = {"removals": 0}

    def other_writer(request: RecordedRequest) -> None:
        items = {i["key"]: i.get("value", "") for i in (request.json() or {}).get("items", [])}
        if "ai-deploy:" in items.get("ssh-keys", ""):
            return  # an add (the run's line is in it): left alone
        seen["removals"] += 1
        if seen["removals"] > conflicts:
            return
        inst = fleet.fake.state.instance_named("k22-05")
        lines = [line for line in entries_of(inst.metadata.get("ssh-keys", "")) if line != USER_KEY]
        fleet.fake.set_metadata("ssh-keys", "\n".join([*lines, USER_KEY]), instance="k22-05")

    fleet.fake.inject(
        "POST", r"/instances/k22-05/setMetadata$", status=None, before=other_writer, times=None
    )
    process = fleet.start("5201")
    code = fleet.finish(process, "5201", timeout=180)

    assert code == 13, process.output  # the stopped instance
    assert "instance k22-10 in zone" in process.output and "STOPPING" in process.output
    rules, keys = fleet.left()
    assert rules == []
    if conflicts < 5:  # within the retries: only the user's own key is left
        assert keys == {"k22-05": USER_KEY}, (keys, process.output)
    else:
        assert "run key left on instance k22-05" in process.output, process.output
        assert USER_KEY in keys["k22-05"]
        assert {run_of(line) for line in entries_of(keys["k22-05"])} == {None, "5201-1"}
        assert set(keys) == {"k22-05"}, keys
        _next_run_sweeps(fleet, "5202", kept={"k22-05": USER_KEY})


def test_a_host_key_read_that_keeps_failing_stops_the_run_naming_the_instance(
    make_fleet: Callable[[int], KeyFleet],
) -> None:
    fleet = make_fleet(10)
    fleet.fake.inject(
        "GET",
        r"/instances/k22-04/getGuestAttributes",
        status=429,
        reason="rateLimitExceeded",
        message="Quota exceeded for quota metric 'Queries'",
        times=None,
    )
    process = fleet.start("5301")
    code = fleet.finish(process, "5301", timeout=180)

    assert code == 13, process.output
    assert "could not read the published host keys of instance k22-04" in process.output
    assert "Quota exceeded" in process.output
    assert "accepted on first use" not in process.output
    assert len(fleet.fake.requests_to("GET", r"/instances/k22-04/getGuestAttributes")) > 1
    assert fleet.metadata_requests() == 0  # no key given anywhere
    assert fleet.left() == ([], {})


@pytest.mark.parametrize("what", ["STOPPING", "deleted"])
def test_an_instance_gone_or_stopping_after_the_listing_gets_no_key_and_is_named(
    make_fleet: Callable[[int], KeyFleet], what: str
) -> None:
    fleet = make_fleet(10)
    fleet.fake.plan_operations("POST", SET_METADATA, seconds=1.0, times=None)
    if what == "STOPPING":
        change = _becomes(fleet, "k22-06", "STOPPING")
    else:

        def change() -> None:
            others = fleet.fake.state.other_instances
            others[:] = [i for i in others if i.name != "k22-06"]

    _stop_on_guest_read(fleet, "k22-06", change)
    process = fleet.start("5401")
    code = fleet.finish(process, "5401", timeout=180)

    assert code == 13, process.output
    if what == "STOPPING":
        assert f"instance k22-06 in zone {ZONE} is STOPPING, not RUNNING" in process.output
    else:
        assert f"instance k22-06 in zone {ZONE} was deleted after the instances were listed" in (
            process.output
        )
    assert "check GCP_INSTANCE" not in process.output
    assert fleet.fake.requests_to("POST", r"/instances/k22-06/setMetadata$") == []
    assert fleet.left() == ([], {})
