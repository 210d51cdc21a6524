"""The rollout's floor (ai_deploy.rollout.floor): rollout_max_unavailable as a count or a
percentage rounded down, which hosts a step takes out of service (one-copy strategies, drains,
blue/green only when two copies do not fit), unhealthy hosts counted, the refusal before any
change, the stop before a later step, and switch-backs in steps within the floor. The fleet is
the stand-in of test_rollout_lost_lock: a table of what each host serves, changed only by the
stand-in pyinfra run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ai_deploy.rollout import exitcodes, report
from ai_deploy.rollout import run as rollout_run
from ai_deploy.rollout.floor import Floor
from ai_deploy.rollout.plan import HostFacts, PlanError, max_unavailable, plan_hosts
from ai_deploy.rollout.run import Health, Rollout
from ai_deploy.settings.rules import rule_problem
from tests.unit.test_rollout_lost_lock import HOSTS, NEW, OLD, FakeFleet

pytestmark = pytest.mark.unit

SHORT_GPU = {"fits": False, "live_mib": 120000, "total_mib": 143771, "message": "short"}


@pytest.mark.parametrize(
    ("value", "fleet", "allowed"),
    [
        ("1", 4, 1), (2, 4, 2), ("50%", 4, 2), ("30%", 4, 1), ("10%", 4, 1), ("99%", 4, 3),
        ("100%", 4, 4), ("9", 4, 4), ("34%", 3, 1), ("67%", 3, 2), ("1", 1, 1), ("25%", 6, 1),
    ],
)  # fmt: skip
def test_a_count_or_a_percentage_rounded_down_and_at_least_one(
    value: object, fleet: int, allowed: int
) -> None:
    assert max_unavailable(value, fleet) == allowed


@pytest.mark.parametrize("value", ["0", "0%", "101%", "-1", "1.5", "two", "%", "1 host"])
def test_a_setting_that_is_no_count_is_refused_naming_what_it_takes(value: str) -> None:
    why = rule_problem("rollout_max_unavailable", value)
    assert why and "number of hosts" in why and "percentage" in why


@pytest.mark.parametrize("value", ["1", "3", "25%", "100%"])
def test_counts_and_percentages_pass_the_rule(value: str) -> None:
    assert rule_problem("rollout_max_unavailable", value) is None


def facts(name: str, strategy: str = "socket", current: str | None = OLD, **more: Any) -> HostFacts:
    return HostFacts(name, name, 8000, "/health", strategy, current, **more)


def plan(fleet: list[HostFacts], batches: list[list[str]]) -> list[list[Any]]:
    by_name = {f.host: f for f in fleet}
    plans = plan_hosts(by_name, batches, NEW, "")
    return [[p for p in plans if p.batch == n] for n in range(len(batches))]


def test_a_batch_of_two_one_copy_hosts_breaks_a_floor_of_one_naming_values_and_fix() -> None:
    steps = plan([facts("a"), facts("b"), facts("c", "restart")], [["a"], ["b", "c"]])
    floor = Floor.of("1", 3)
    assert floor.breach("canary", steps[0], set()) == ""
    why = floor.breach("batch 1", steps[1], set())
    assert why.startswith("batch 1 would take 2 of 3 host(s) out of service at once")
    assert "b: one-copy restart; c: one-copy restart" in why
    assert "rollout_max_unavailable='1' allows 1" in why
    assert "steps of at most 1 such host(s)" in why and "rollout_max_unavailable=2" in why
    assert Floor.of("67%", 3).breach("batch 1", steps[1], set()) == ""


def test_blue_green_keeps_serving_unless_drained_or_short_of_gpu_memory() -> None:
    fleet = [
        facts("a", "bluegreen"),
        facts("b", "bluegreen"),
        facts("c", "bluegreen", gpu={"fits": True, "live_mib": 10, "total_mib": 100}),
    ]
    floor = Floor.of("1", 3)
    assert floor.breach("batch 1", plan(fleet, [["a", "b", "c"]])[0], set()) == ""
    drained = [*fleet[:2], facts("c", "bluegreen", lb_drain=True)]
    assert floor.breach("batch 1", plan(drained, [["a", "b", "c"]])[0], set()) == ""
    drained = [facts("a", "bluegreen", lb_drain=True), *drained[1:]]
    assert "a: drain + blue/green" in floor.breach("b", plan(drained, [["a", "c"]])[0], ())
    short = [facts("a", "bluegreen", gpu=SHORT_GPU), facts("b", "bluegreen", gpu=SHORT_GPU)]
    assert "2 of 3" in floor.breach("batch 1", plan(short, [["a", "b"]])[0], set())
    refuse = [facts(n, "bluegreen", gpu=SHORT_GPU, gpu_when_short="refuse") for n in "ab"]
    assert floor.breach("batch 1", plan(refuse, [["a", "b"]])[0], set()) == ""


def test_hosts_already_unhealthy_count_and_a_host_in_the_step_counts_once() -> None:
    steps = plan([facts("a"), facts("b"), facts("c")], [["a"], ["b"], ["c"]])
    floor = Floor.of("1", 3)
    why = floor.breach("canary", steps[0], {"c"})
    assert "a: one-copy restart; c: unhealthy now" in why
    assert "bring c back into service first" in why and "steps of at most" not in why
    assert floor.breach("canary", steps[0], {"a"}) == ""  # the host itself: out once
    assert floor.first_breach([("canary", steps[0]), ("batch 1", steps[1])], {"b"}).startswith(
        "canary would take 2"
    )


def test_a_host_with_nothing_deployed_or_no_change_is_not_taken_out() -> None:
    fresh = [facts("a", current=None), facts("b", current=None), facts("c", current=NEW)]
    assert Floor.of("1", 3).breach("batch 1", plan(fresh, [["a", "b", "c"]])[0], set()) == ""


def test_a_restart_takes_out_the_host_it_restarts_even_with_no_release_change() -> None:
    by_name = {"a": facts("a"), "b": facts("b")}
    plans = plan_hosts(by_name, [["a", "b"]], NEW, "", targets={"a": OLD, "b": OLD}, restart=True)
    assert [p.takes_out for p in plans] == [True, True]
    assert Floor.of("1", 2).breach("batch 1", plans, set())


def test_switch_backs_go_in_steps_within_the_floor_serving_hosts_first() -> None:
    fleet = [facts("a"), facts("b", "bluegreen"), facts("c"), facts("d", "restart")]
    plans = plan(fleet, [["a", "b", "c", "d"]])[0]
    assert Floor.of("1", 4).chunks(plans) == [["b", "a"], ["c"], ["d"]]
    assert Floor.of("2", 4).chunks(plans) == [["b", "a", "c"], ["d"]]
    assert Floor.of("1", 4).chunks(plans[1:2]) == [["b"]]


class FloorFleet(FakeFleet):
    """The stand-in fleet, where DOWN hosts do not answer their health check at all."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **settings: object) -> None:
        super().__init__(monkeypatch)
        self.fleet.settings.update(settings)
        self.down: set[str] = set()

    def health(self, url: str, *args: Any) -> tuple[bool, str]:
        if any(h in url for h in self.down):
            return False, "ConnectionError"
        return super().health(url, *args)


def test_a_plan_that_breaks_the_floor_is_refused_before_any_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = FloorFleet(monkeypatch, rollout_max_unavailable="1")
    with pytest.raises(PlanError) as caught:
        hosts.rollout()
    assert "batch 1 would take 2 of 4 host(s)" in str(caught.value)
    assert str(caught.value).endswith("nothing changed on any host")
    assert hosts.runs == [] and hosts.serving == dict.fromkeys(HOSTS, OLD)
    assert "at most 1 host out of service at once (rollout_max_unavailable=1)" in hosts.said


def test_an_unhealthy_host_refuses_a_canary_that_would_take_a_second_one_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = FloorFleet(monkeypatch, rollout_max_unavailable="1", rollout_batch_size="1")
    hosts.down = {"host-d"}
    with pytest.raises(PlanError) as caught:
        hosts.rollout()
    assert "canary would take 2 of 4" in str(caught.value) and "host-d: unhealthy now" in str(
        caught.value
    )
    assert hosts.runs == []


def test_hosts_gone_unhealthy_during_the_rollout_stop_it_before_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = FloorFleet(monkeypatch, rollout_max_unavailable="1", rollout_batch_size="1")
    hosts.during_step = lambda step: step == ["host-a"] and hosts.down.add("host-d")
    out = hosts.rollout()
    assert hosts.runs == [(NEW, ["host-a"])]  # batch 1 never ran
    assert hosts.serving == {"host-a": NEW, "host-b": OLD, "host-c": OLD, "host-d": OLD}
    assert out.code == exitcodes.EXIT_FLOOR
    assert "batch 1 would take 2 of 4" in out.message and "host-d: unhealthy now" in out.message
    assert "stopped before batch 1, which changed nothing" in out.message
    outcomes = {r.host: r.outcome for r in out.results}
    assert outcomes["host-b"] == report.NOT_REACHED and outcomes["host-a"] == report.UPDATED


@pytest.mark.parametrize(
    ("floor", "batch", "failing", "back"),
    [
        # batches of 3 one-copy hosts under a floor of 3, host-d failing from outside: the
        # four switched hosts go back at most 3 at a time, never all at once
        ("3", "3", "host-d", [["host-a", "host-b", "host-c"], ["host-d"]]),
        # a floor of 1: each switched host is restored alone, in the order it was switched
        ("1", "1", "host-c", [["host-a"], ["host-b"], ["host-c"]]),
    ],
)
def test_a_failed_rollout_is_switched_back_in_steps_within_the_floor(
    monkeypatch: pytest.MonkeyPatch, floor: str, batch: str, failing: str, back: list[list[str]]
) -> None:
    hosts = FloorFleet(monkeypatch, rollout_max_unavailable=floor, rollout_batch_size=batch)
    hosts.unhealthy = {failing}
    out = hosts.rollout()
    assert out.code == exitcodes.EXIT_SWITCHED_BACK
    assert hosts.serving == dict.fromkeys(HOSTS, OLD)  # never ends mixed
    forth = [names for release, names in hosts.runs if release == NEW]
    assert [n for step in forth for n in step] == list(HOSTS[: HOSTS.index(failing) + 1])
    assert hosts.runs[len(forth) :] == [(OLD, names) for names in back]


def test_one_health_url_for_every_host_counts_no_host_as_unhealthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A load balancer's URL that fails cannot say which host is down: none is counted.
    hosts = FloorFleet(monkeypatch)
    hosts.down = set(HOSTS)
    one_url = Rollout("inv.py", Path("a"), NEW, "", [], {}, Health(1, 0, 1, "http://lb/health"))
    assert rollout_run._unhealthy(one_url, hosts.fleet, HOSTS) == {}
    each = Rollout("inv.py", Path("a"), NEW, "", [], {}, Health(1, 0, 1, None))
    assert set(rollout_run._unhealthy(each, hosts.fleet, HOSTS)) == set(HOSTS)
