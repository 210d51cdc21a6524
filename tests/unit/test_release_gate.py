"""The whole change on one host (ai_deploy.host.gate.put_in_service) on a temporary
tree with stand-in systemd, and what it reports: the outcome as JSON and the exit code."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.outcome import (
    ALREADY_SERVING,
    FAILED,
    SERVED,
    STATUSES,
    SWITCH_BACK_FAILED,
    SWITCHED_BACK,
    HostOutcome,
    read_outcomes,
    report,
)
from ai_deploy.rollout.exitcodes import exit_for_outcomes

pytestmark = pytest.mark.unit

SERVICE = "ai-server.service"
SOCKET = "ai-server.socket"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


def exit_code(outcome: HostOutcome) -> int:
    """The code CI exits with for OUTCOME, read back as the result file carries it."""
    return exit_for_outcomes([HostOutcome.from_json(outcome.to_json())], ["h1"])


def last_journal(host: FakeHost) -> str:
    return host.journal()[-1]


def outcome_who(host: FakeHost) -> str:
    return host.spec().who


def no_lock(host: FakeHost) -> bool:
    return not (host.app_root / ".deploy.lock").exists()


def test_gate_first_deploy_is_served(host: FakeHost) -> None:
    outcome = host.deploy("r1")
    assert (outcome.status, outcome.serving, outcome.previous, outcome.phase) == (
        SERVED,
        "r1",
        None,
        None,
    )
    assert outcome.ok and exit_code(outcome) == 0
    assert host.get() == (200, "release r1")
    assert (host.link("current"), host.link("previous")) == ("r1", None)
    assert re.fullmatch(r"\S+Z deploy r1 ok by=\S+ previous=-", last_journal(host))
    assert host.unit(SERVICE).active == "active" and host.unit(SERVICE).release == "r1"
    assert host.unit(SOCKET).active == "active" and host.unit(SOCKET).enabled
    assert no_lock(host)


def test_gate_next_release_served_with_previous_kept(host: FakeHost) -> None:
    host.deploy("r1")
    outcome = host.deploy("r2")
    assert (outcome.status, outcome.serving, outcome.previous) == (SERVED, "r2", "r1")
    assert host.get() == (200, "release r2")
    assert (host.link("current"), host.link("previous")) == ("r2", "r1")
    assert last_journal(host).endswith("deploy r2 ok by=" + outcome_who(host) + " previous=r1")


def test_gate_unhealthy_release_is_switched_back(host: FakeHost) -> None:
    host.deploy("r1")
    outcome = host.deploy("r2", behaviour="unhealthy")
    assert (outcome.status, outcome.phase, outcome.serving, outcome.previous) == (
        SWITCHED_BACK,
        "health",
        "r1",
        "r1",
    )
    assert "answered 500 3 times in a row" in outcome.reason
    assert "rolled back to r1, which is healthy" in outcome.reason
    assert exit_code(outcome) == 15
    # The previous release serves again, restarted on its own code.
    assert host.get() == (200, "release r1")
    assert host.unit(SERVICE).release == "r1"
    assert (host.link("current"), host.link("previous")) == ("r1", None)
    line = last_journal(host)
    assert re.fullmatch(r"\S+Z deploy r2 failed by=\S+ rolled-back-to=r1 reason='.*500.*'", line)
    assert "switching back to release r1" in host.remote.warned
    assert no_lock(host)


def test_gate_crashing_release_is_switched_back_naming_its_error_log(host: FakeHost) -> None:
    host.deploy("r1")
    outcome = host.deploy("r2", behaviour="crash")
    assert outcome.status == SWITCHED_BACK and outcome.serving == "r1"
    assert "the service exited while starting (exit status 1, activating/auto-restart)" in (
        outcome.reason
    )
    log = next(w for w in host.remote.warned if w.startswith("last lines of"))
    assert "Traceback: release r2 crashed while starting" in log
    assert host.get() == (200, "release r1")


def test_gate_switch_back_failed_when_previous_is_unhealthy_too(host: FakeHost) -> None:
    host.deploy("r1")
    host.set_behaviour(SERVICE, "crash")  # e.g. .env broken: no release starts any more
    outcome = host.deploy("r2")
    assert (outcome.status, outcome.phase, outcome.serving) == (
        SWITCH_BACK_FAILED,
        "rollback",
        None,
    )
    assert "the previous release r1 is not healthy either" in outcome.reason
    assert exit_code(outcome) == 16
    assert host.get() == (0, "")
    assert host.link("current") == "r1"  # the links are put back all the same
    assert re.fullmatch(
        r"\S+Z deploy r2 failed by=\S+ rollback-to=r1 also-unhealthy", last_journal(host)
    )
    assert no_lock(host)


def test_gate_release_whose_start_job_fails_is_switched_back(host: FakeHost) -> None:
    host.deploy("r1")
    outcome = host.deploy("r2", behaviour="refuse")
    assert (outcome.status, outcome.serving) == (SWITCHED_BACK, "r1")
    assert "systemctl restart ai-server.service failed" in outcome.reason
    assert host.get() == (200, "release r1")
    assert host.link("current") == "r1"
    assert "rolled-back-to=r1" in last_journal(host)


def test_gate_release_that_never_answers_fails_at_the_deadline(host: FakeHost) -> None:
    host.deploy("r1")
    outcome = host.deploy("r2", behaviour="silent", health_deadline_s=1)
    assert (outcome.status, outcome.serving) == (SWITCHED_BACK, "r1")
    assert "not healthy within health_deadline_s=1 s" in outcome.reason
    assert host.get() == (200, "release r1")


def test_gate_first_deploy_failing_stops_the_service_and_removes_current(host: FakeHost) -> None:
    outcome = host.deploy("r1", behaviour="unhealthy")
    assert (outcome.status, outcome.phase, outcome.serving, outcome.previous) == (
        FAILED,
        "health",
        None,
        None,
    )
    assert "to go back to, so the service is stopped" in outcome.reason
    assert exit_code(outcome) == 14
    assert host.unit(SERVICE).active == "inactive"
    # Nor does the socket stay enabled: at boot it would take connections nothing answers.
    assert host.unit(SOCKET).active == "inactive" and not host.unit(SOCKET).enabled
    assert not (host.app_root / "current").is_symlink()
    assert host.get() == (0, "")
    assert re.fullmatch(
        r"\S+Z deploy r1 failed by=\S+ no-previous-release reason='.*'", last_journal(host)
    )
    assert no_lock(host)


def test_gate_refused_while_another_deploy_holds_the_lock(host: FakeHost) -> None:
    lock = host.app_root / ".deploy.lock"
    lock.mkdir(parents=True)
    info = {"who": "alice@ci", "deployer": "other-runner", "pid": 1, "action": "deploy"}
    info |= {"release": "r0", "started": 4102444800, "started_at": "x", "token": "f" * 16}
    (lock / "info").write_text(json.dumps(info) + "\n")
    outcome = host.deploy("r1")
    assert (outcome.status, outcome.phase) == (FAILED, "lock")
    assert "locked by alice@ci (deploy of r0, from other-runner pid 1" in outcome.reason
    assert exit_code(outcome) == 14
    assert json.loads((lock / "info").read_text()) == info  # still theirs
    assert sorted(p.name for p in host.app_root.iterdir()) == [".deploy.lock", ".deploy.lock.guard"]
    assert host.uv_calls() == [] and host.journal() == []


def test_gate_venv_failure_leaves_the_running_release_alone(host: FakeHost) -> None:
    host.deploy("r1")
    pid = (host.state / "units" / SERVICE / "pid").read_text()
    (host.state / "uv.fail").touch()
    outcome = host.deploy("r2", lock="lock-v2")
    assert (outcome.status, outcome.phase, outcome.serving) == (FAILED, "venv", None)
    assert (host.state / "units" / SERVICE / "pid").read_text() == pid  # never restarted
    assert host.get() == (200, "release r1")
    assert host.tree().releases == ["r1"]
    assert len(host.journal()) == 1  # the host did not change: nothing journalled
    assert no_lock(host)


def test_gate_rollback_to_a_release_on_the_host(host: FakeHost) -> None:
    host.deploy("r1")
    host.deploy("r2")
    outcome = host.deploy("r1", action="rollback")
    assert (outcome.status, outcome.action, outcome.previous) == (SERVED, "rollback", "r2")
    assert (host.link("current"), host.link("previous")) == ("r1", "r2")
    assert host.get() == (200, "release r1")
    assert len(host.uv_calls()) == 1
    assert " rollback r1 ok " in last_journal(host)


# --- outcomes as data ---


@pytest.mark.parametrize("status", STATUSES)
def test_outcome_json_round_trip(status: str) -> None:
    outcome = HostOutcome(
        host="h1",
        action="deploy",
        release="r2",
        status=status,
        phase="health",
        reason="line one\nline 'two' \"quoted\"",
        serving="r1",
        previous="r1",
        seconds=12.5,
    )
    assert HostOutcome.from_json(outcome.to_json()) == outcome
    assert "\n" not in outcome.to_json()


def test_outcome_with_an_unknown_status_is_refused() -> None:
    text = HostOutcome("h1", "deploy", "r1", SERVED).to_json().replace(SERVED, "fine")
    with pytest.raises(ValueError, match="unknown host outcome status 'fine'"):
        HostOutcome.from_json(text)


def test_reported_outcomes_read_back_last_per_host(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    report(HostOutcome("h1", "deploy", "r1", ALREADY_SERVING), str(path))
    report(HostOutcome("h2", "deploy", "r1", FAILED, phase="lock"), str(path))
    report(HostOutcome("h1", "deploy", "r1", SERVED, serving="r1"), str(path))
    found = read_outcomes(path)
    assert {h: o.status for h, o in found.items()} == {"h1": SERVED, "h2": FAILED}
    assert read_outcomes(tmp_path / "missing.jsonl") == {}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (SERVED, 0),
        (ALREADY_SERVING, 0),
        (SWITCHED_BACK, 15),
        (FAILED, 14),
        (SWITCH_BACK_FAILED, 16),
    ],
)
def test_exit_for_outcomes_per_status(status: str, code: int) -> None:
    assert exit_for_outcomes([HostOutcome("h1", "deploy", "r1", status)], ["h1"]) == code


def test_exit_for_outcomes_a_host_that_reported_nothing_failed() -> None:
    served = HostOutcome("h1", "deploy", "r1", SERVED)
    assert exit_for_outcomes([served], ["h1", "h2"]) == 14
    assert exit_for_outcomes([], ["h1"]) == 14


def test_exit_for_outcomes_the_most_urgent_wins() -> None:
    def o(host: str, status: str) -> HostOutcome:
        return HostOutcome(host, "deploy", "r1", status)

    hosts = ["a", "b", "c", "d"]
    assert exit_for_outcomes([o("a", SERVED), o("b", SWITCHED_BACK)], ["a", "b"]) == 15
    assert exit_for_outcomes([o("a", SWITCHED_BACK), o("b", FAILED)], ["a", "b"]) == 14
    mixed = [o("a", SWITCH_BACK_FAILED), o("b", FAILED), o("c", SWITCHED_BACK), o("d", SERVED)]
    assert exit_for_outcomes(mixed, hosts) == 16


# --- "healthy" is a recorded fact ---


def _interrupted(host: FakeHost) -> None:
    """r1 served, then r2 went live but its deploy died before the gate passed (as a SIGKILL
    during the health wait leaves a host): current is r2 with no healthy record."""
    host.deploy("r1")
    host.deploy("r2")
    (host.app_root / "healthy" / "r2").unlink()
    assert host.link("current") == "r2" and not host.tree().is_healthy("r2")


def test_a_release_that_passes_the_gate_is_recorded_healthy_with_its_artifact(
    host: FakeHost,
) -> None:
    host.deploy("r1")
    tree = host.tree()
    assert tree.is_healthy("r1")
    recorded = (host.app_root / "healthy" / "r1").read_text().split()[0]
    assert recorded == tree.release_sha256["r1"] and len(recorded) == 64


def test_interrupted_release_goes_through_the_gate_again_and_is_switched_back(
    host: FakeHost,
) -> None:
    _interrupted(host)
    (host.app_root / "releases" / "r2" / "BEHAVIOUR").write_text("unhealthy\n")
    outcome = host.deploy("r2")
    assert (outcome.status, outcome.serving) == (SWITCHED_BACK, "r1")
    assert host.link("current") == "r1"
    assert host.link("previous") is None  # r2 never passed the gate
    assert not host.tree().is_healthy("r2")


def test_interrupted_release_that_turns_healthy_is_recorded_and_previous_stays_healthy(
    host: FakeHost,
) -> None:
    _interrupted(host)
    outcome = host.deploy("r2")
    assert outcome.status == SERVED
    assert (host.link("current"), host.link("previous")) == ("r2", "r1")
    assert host.tree().is_healthy("r2")
    # The next release: r2 (now healthy) becomes previous.
    host.deploy("r3")
    assert host.link("previous") == "r2"


def test_an_unchecked_current_never_becomes_previous(host: FakeHost) -> None:
    _interrupted(host)
    host.deploy("r3")
    assert (host.link("current"), host.link("previous")) == ("r3", "r1")
