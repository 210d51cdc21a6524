"""What a rollback and a restart ask of each host, decided from its state before anything
changes: the release each goes to, the refusal (naming the host and what it keeps) when it has
none, the plan lines, the one-host steps of a restart, and each step's pyinfra data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_deploy.rollout.fleetlock import Fleet
from ai_deploy.rollout.plan import HostFacts, PlanError, plan_hosts
from ai_deploy.rollout.run import Health, Rollout, _steps

pytestmark = pytest.mark.unit


def _facts(host: str, current: str | None, previous: str | None, *kept: str) -> HostFacts:
    return HostFacts(host, "10.0.0.1", 8000, "/health", "socket", current, previous, list(kept))


def _rollout(action: str, release: str) -> Rollout:
    health = Health(1, 0.0, 1.0)
    return Rollout("inv.py", Path("/dev/null"), release, "", [], {}, health, action=action)


FLEET = {
    "h1": _facts("h1", "r2", "r1", "r1", "r2"),
    "h2": _facts("h2", "r3", "r2", "r2", "r3"),
}


def test_a_rollback_takes_each_host_to_its_own_previous_release() -> None:
    r = _rollout("rollback", "previous")
    targets = {name: r.target_of(f) for name, f in FLEET.items()}
    assert targets == {"h1": "r1", "h2": "r2"}
    plans = plan_hosts(FLEET, [["h1"], ["h2"]], r.release, "", None, targets)
    assert [(p.host, p.before, p.after, p.changes) for p in plans] == [
        ("h1", "r2", "r1", True),
        ("h2", "r3", "r2", True),
    ]


def test_a_named_rollback_goes_to_that_release_and_leaves_a_host_already_there() -> None:
    r = _rollout("rollback", "r2")
    targets = {name: r.target_of(f) for name, f in FLEET.items()}
    plans = plan_hosts(FLEET, [["h1", "h2"]], r.release, "", None, targets)
    assert [(p.after, p.changes) for p in plans] == [("r2", False), ("r2", True)]


@pytest.mark.parametrize(
    ("action", "release", "facts", "says"),
    [
        ("rollback", "previous", _facts("h9", "r1", None, "r1"), "no previous release"),
        ("rollback", "r7", _facts("h9", "r1", None, "r1"), "release r7 is not on the host"),
        ("restart", "current", _facts("h9", None, None), "nothing to restart"),
    ],
)
def test_a_host_with_nowhere_to_go_stops_the_run_before_any_change(
    action: str, release: str, facts: HostFacts, says: str
) -> None:
    with pytest.raises(PlanError) as caught:
        _rollout(action, release).target_of(facts)
    assert str(caught.value).startswith("h9: ") and says in str(caught.value)


def test_a_restart_is_one_host_a_step_whatever_the_rollout_settings() -> None:
    fleet = Fleet(dict(FLEET), {"rollout_canary": "1", "rollout_batch_size": "100%"})
    batches, canary, _ = _steps(_rollout("restart", "current"), fleet)
    assert (batches, canary) == ([["h1"], ["h2"]], False)
    batches, canary, _ = _steps(_rollout("rollback", "previous"), fleet)
    assert (batches, canary) == ([["h1"], ["h2"]], True)


def test_each_step_tells_pyinfra_what_to_do_under_the_rollouts_locks() -> None:
    for action, release, what in [
        ("rollback", "previous", "rollback=previous"),
        ("rollback", "r1", "rollback=r1"),
        ("restart", "current", "restart_current=true"),
    ]:
        r = _rollout(action, release)
        assert r.step_data() == [what, f"rollout_lock_token={r.token}"]
