"""The rollout's plan, pure: counts and percentages, batches in order, each host's line, and
the per-host table."""

from __future__ import annotations

import pytest

from ai_deploy.rollout.plan import (
    HostFacts,
    PlanError,
    make_batches,
    parse_count,
    plan_hosts,
    plan_json,
    render_plan,
)
from ai_deploy.rollout.report import HostResult, render_table

pytestmark = pytest.mark.unit

HOSTS = ["h1", "h2", "h3", "h4"]


@pytest.mark.parametrize(
    ("value", "fleet", "minimum", "expected"),
    [
        ("1", 4, 0, 1), (2, 4, 1, 2), ("25%", 4, 1, 1), ("10%", 4, 1, 1), ("50%", 5, 1, 3),
        ("100%", 4, 1, 4), ("9", 4, 1, 4), ("0", 4, 0, 0), ("0", 4, 1, 1), ("0%", 4, 0, 0),
        (" 3 ", 4, 1, 3),
    ],
)  # fmt: skip
def test_counts_and_percentages(value: object, fleet: int, minimum: int, expected: int) -> None:
    assert parse_count(value, "x", fleet, minimum=minimum) == expected


@pytest.mark.parametrize("value", ["", "two", "-1", "1.5", "150%", "%", "25 %%"])
def test_bad_counts_name_the_setting_and_the_fix(value: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse_count(value, "rollout_batch_size", 4, minimum=1)
    assert "rollout_batch_size=" in str(caught.value)
    assert "number of hosts" in str(caught.value) or "percentage" in str(caught.value)


def test_batches_canary_first_then_the_rest_in_order() -> None:
    assert make_batches(HOSTS, "1", "2") == [["h1"], ["h2", "h3"], ["h4"]]
    assert make_batches(HOSTS, "1", "100%") == [["h1"], ["h2", "h3", "h4"]]
    assert make_batches(HOSTS, "0", "100%") == [HOSTS]
    assert make_batches(HOSTS, "50%", "1") == [["h1", "h2"], ["h3"], ["h4"]]
    assert make_batches(["solo"], "1", "25%") == [["solo"]]
    assert make_batches([], "1", "1") == []
    every = [h for batch in make_batches(HOSTS, "1", "25%") for h in batch]
    assert every == HOSTS  # each host exactly once, in order


def facts(name: str, current: str | None, releases: list[str], venvs: list[str]) -> HostFacts:
    return HostFacts(name, f"10.0.0.{name[-1]}", 8000, "/health", "socket", current, None,
                     releases, venvs, units=["app.socket", "app.service"])  # fmt: skip


def test_plan_lines_say_before_after_venv_and_strategy() -> None:
    f = {
        "h1": facts("h1", "r1", ["r1"], ["aaa"]),
        "h2": facts("h2", "r1", ["r1"], ["bbb"]),
        "h3": facts("h3", "r2", ["r2", "r1"], ["aaa"]),
        "h4": facts("h4", None, [], []),
    }
    plans = plan_hosts(f, make_batches(HOSTS, "1", "2"), "r2", "aaa")
    lines = render_plan(plans, True, 30)
    assert lines[0] == "plan: 4 host(s) in 3 step(s), 30 s watched after each"
    assert lines[1].split() == ["canary", "h1", "r1", "->", "r2", "(venv", "reused,", "socket)",
                                "restarts", "app.socket,", "app.service;", "one-copy", "restart,",
                                "out", "of", "service", "unknown", "(no", "start", "measured",
                                "yet)"]  # fmt: skip
    assert lines[2].split()[:6] == ["batch", "1", "h2", "r1", "->", "r2"]
    assert "(venv built, socket)" in lines[2]
    assert lines[3].endswith("(no change, socket)")  # a host already serving restarts nothing
    assert "(none) -> r2  (venv built" in lines[4]
    assert lines[4].endswith("; one-copy restart, not in service yet")
    data = plan_json(plans, True)
    assert [d["step"] for d in data] == ["canary", "batch 1", "batch 1", "batch 2"]
    assert data[2] == {"host": "h3", "step": "batch 1", "before": "r2", "after": "r2",
                       "changes": False, "builds_venv": False, "strategy": "socket",
                       "fetch_files": 0, "fetch_bytes": 0, "restarts": [], "method": None,
                       "out_of_service": False, "expected_outage_s": 0, "gpu": ""}  # fmt: skip
    assert data[0]["restarts"] == ["app.socket", "app.service"]


def test_plan_says_which_model_files_each_host_must_fetch() -> None:
    have = HostFacts("h1", "a", 8000, "/h", "socket", "r1", None, ["r1"], ["aaa"],
                     model_blobs=["s1"])  # fmt: skip
    fresh = HostFacts("h2", "b", 8000, "/h", "socket", "r1", None, ["r1"], ["aaa"])
    serving = HostFacts("h3", "c", 8000, "/h", "socket", "r2", None, ["r2"], ["aaa"])
    sizes = {"s1": 3 * 2**30, "s2": 512 * 2**20}
    f = {"h1": have, "h2": fresh, "h3": serving}
    plans = plan_hosts(f, [["h1", "h2", "h3"]], "r2", "aaa", sizes)
    assert [(p.fetch_files, p.fetch_bytes) for p in plans] == [
        (1, 512 * 2**20), (2, 3 * 2**30 + 512 * 2**20), (0, 0),
    ]  # fmt: skip
    lines = render_plan(plans, False, 0)
    assert "(venv reused, 1 model file(s) to fetch: 512.0 MiB, socket)" in lines[1]
    assert "2 model file(s) to fetch: 3.5 GiB" in lines[2]
    assert lines[3].endswith("(no change, socket)")  # a host already serving restarts nothing


def test_table_lines_up_and_shows_every_host() -> None:
    rows = [
        HostResult("h1", "canary", "r1", "r1", "switched back", 12.34),
        HostResult("longer-name", "batch 1", "r1", "r1", "failed", 3.0, "health"),
        HostResult("h3", "batch 2", None, None, "not reached"),
    ]
    lines = render_table(rows)
    assert lines[0].split() == ["host", "step", "before", "after", "outcome", "time"]
    assert lines[1].split() == ["h1", "canary", "r1", "r1", "switched", "back", "12.3s"]
    assert "failed (health)" in lines[2]
    assert lines[3].split()[:4] == ["h3", "batch", "2", "-"]
    starts = {line.index(line.split()[1]) for line in lines[1:2]}
    assert len(starts) == 1
