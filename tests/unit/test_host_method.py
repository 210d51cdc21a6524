"""How a release goes live on each host, as the plan says it (ai_deploy.host.method): the one
read per host run by a shell with stand-ins for nvidia-smi and systemctl, its parsing, and the
choice between blue/green and a one-copy restart with the expected time out of service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai_deploy.host.method import (
    BLUE_GREEN,
    DRAIN_ONE_COPY,
    ONE_COPY,
    UNKNOWN_START,
    choose,
    method_script,
    parse_method_facts,
    start_seconds,
)
from ai_deploy.host.paths import Layout
from ai_deploy.rollout.plan import HostFacts, plan_hosts, plan_json, render_plan
from tests.unit.test_gpu_memory import DATA, script_remote

pytestmark = pytest.mark.unit

LAST = {"release": "r1", "strategy": "restart", "outage_s": 41.6, "start_s": 40.2, "at": "x"}


def host(tmp_path: Path, blue_mib: str) -> tuple[Layout, str]:
    """An app tree with one verified model file and a last start; blue holding the GPU."""
    layout = Layout(str(tmp_path / "app"), "ai-server", str(tmp_path / "log"))
    blobs = tmp_path / "app" / "models" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "abc").write_text("x")
    (blobs / "abc.verified").write_text("")
    (blobs / "def").write_text("partial, not verified")
    (tmp_path / "app" / "last-start.json").write_text(json.dumps(LAST))
    smi = tmp_path / "smi"
    (smi / "query-gpu").write_text((DATA / "query-gpu-h200-vllm.txt").read_text())
    (smi / "compute-apps").write_text(f"535, {blue_mib}\n")
    (smi / "ai-server@blue.service.pid").write_text("535\n")
    return layout, str(tmp_path / "cgroup")


def test_the_one_read_finds_blobs_last_start_and_a_gpu_too_small_for_two(tmp_path: Path) -> None:
    remote = script_remote(tmp_path)
    layout, cgroup = host(tmp_path, "GPU-78ff34cd-3f67-b5c1-4197-cddde0e38ad8, 128776")
    result = remote.run(method_script(layout, "blue", cgroup))
    assert len(remote.scripts) == 1  # one read per host
    facts = parse_method_facts(result.stdout, "blue")
    assert facts.blobs == ["abc"] and facts.last_start == LAST
    assert facts.gpu is not None
    assert (facts.gpu["fits"], facts.gpu["live_mib"], facts.gpu["total_mib"]) == (
        False, 128776, 143771,
    )  # fmt: skip
    method = choose(True, False, facts.gpu, "restart", facts.last_start)
    assert method.name == ONE_COPY and method.out_of_service and method.outage_s == 40.2
    assert method.gpu == (
        "GPU: live holds 128776 of 143771 MiB; two copies do not fit: one-copy restart, "
        "expected outage ~40 s"
    )


def test_a_gpu_with_room_for_two_keeps_blue_green(tmp_path: Path) -> None:
    remote = script_remote(tmp_path)
    layout, cgroup = host(tmp_path, "GPU-78ff34cd-3f67-b5c1-4197-cddde0e38ad8, 4000")
    facts = parse_method_facts(
        remote.run(method_script(layout, "blue", str(cgroup))).stdout, "blue"
    )
    assert facts.gpu is not None and facts.gpu["fits"] is True
    method = choose(True, False, facts.gpu, "restart", facts.last_start)
    assert (method.name, method.out_of_service, method.outage, method.gpu) == (
        BLUE_GREEN, False, "0 s", "",
    )  # fmt: skip


def test_no_gpu_read_without_a_live_colour_and_no_nvidia_smi_is_no_verdict(
    tmp_path: Path,
) -> None:
    remote = script_remote(tmp_path, with_smi=False)
    layout, cgroup = host(tmp_path, "x")
    assert "nvidia-smi" not in method_script(layout, None)
    facts = parse_method_facts(
        remote.run(method_script(layout, "blue", str(cgroup))).stdout, "blue"
    )
    assert facts.gpu == {"fits": None, "live_mib": 0, "total_mib": None, "message": ""}
    assert choose(True, False, facts.gpu, "restart", None).name == BLUE_GREEN


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (json.dumps(LAST), 40.2),
        ('{"outage_s": 12}', 12.0),
        ('{"start_s": "soon", "outage_s": -3}', None),
        ('{"start_s": true}', None),
        ("not json {", None),
        ('["a list"]', None),
        ("", None),
    ],
)
def test_the_last_start_is_read_when_it_makes_sense_and_unknown_otherwise(
    text: str, seconds: float | None
) -> None:
    facts = parse_method_facts(["== blobs", "== last-start", *text.splitlines()], None)
    assert start_seconds(facts.last_start) == seconds


def test_one_copy_strategies_and_drains_are_out_of_service_for_the_last_start() -> None:
    assert choose(False, False, None, "restart", None).outage == UNKNOWN_START
    assert choose(False, True, None, "restart", LAST).name == DRAIN_ONE_COPY
    assert choose(False, False, None, "restart", LAST).outage == "~40 s"
    short = {"fits": False, "live_mib": 9, "total_mib": None}
    refused = choose(True, False, short, "refuse", LAST)
    assert not refused.out_of_service and refused.gpu.endswith("two copies do not fit: refused")
    unknown = choose(True, False, short, "restart", None)
    assert unknown.gpu == (
        "GPU: live holds 9 MiB; two copies do not fit: one-copy restart, expected outage "
        "unknown (no start measured yet)"
    )


def test_the_plan_prints_each_hosts_method_outage_and_gpu_line_and_says_it_as_data() -> None:
    short = {"fits": False, "live_mib": 128776, "total_mib": 143771}
    f = {
        "a": HostFacts("a", "a", 8000, "/h", "bluegreen", "r1", gpu=short, last_start=LAST),
        "b": HostFacts("b", "b", 8000, "/h", "bluegreen", "r1"),
        "c": HostFacts("c", "c", 8000, "/h", "socket", "r2"),
    }
    plans = plan_hosts(f, [["a"], ["b", "c"]], "r2", "")
    lines = render_plan(plans, True, 0)
    assert lines[1].endswith("; one-copy restart, out of service ~40 s")
    assert lines[2].split() == [
        "GPU:", "live", "holds", "128776", "of", "143771", "MiB;", "two", "copies", "do", "not",
        "fit:", "one-copy", "restart,", "expected", "outage", "~40", "s",
    ]  # fmt: skip
    assert lines[3].endswith("; blue/green, out of service 0 s")
    assert lines[4].endswith("(no change, socket)")
    data = plan_json(plans, True)
    assert [(d["method"], d["out_of_service"], d["expected_outage_s"]) for d in data] == [
        (ONE_COPY, True, 40.2), (BLUE_GREEN, False, 0), (None, False, 0),
    ]  # fmt: skip
    assert str(data[0]["gpu"]).startswith("GPU: live holds 128776 of 143771 MiB")


def test_the_plan_names_the_colour_a_blue_green_release_starts_as() -> None:
    from ai_deploy.host.settings import Spec
    from ai_deploy.rollout.holder import _going_live

    spec = Spec.from_data({"deploy_strategy": "bluegreen"})
    assert _going_live(spec, "blue") == ["ai-server@green.service"]
    assert _going_live(spec, "green") == ["ai-server@blue.service"]
    assert _going_live(spec, None) == ["ai-server@blue.service"]  # the first start
    restart = Spec.from_data({"deploy_strategy": "restart"})
    assert _going_live(restart, None) == ["ai-server.service"]
