"""Blue/green on a GPU host (ai_deploy.host.strategies.bluegreen with ai_deploy.host.gpu_memory):
the whole gate on a FakeHost with a stand-in nvidia-smi fed the files of tests/data/gpu/
(hand-written in the documented format, see its README). Two copies fit: blue/green as always;
they do not: the live colour stops before the idle one starts ("restart"), or nothing changes
("refuse"); no nvidia-smi, or a failing one: blue/green as always."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.outcome import FAILED, SERVED, SWITCHED_BACK

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"
BLUE = "ai-server@blue.service"
GREEN = "ai-server@green.service"

# Answers only the two documented queries the deploy runs; anything else is an error.
SMI = """#!/bin/sh
echo "nvidia-smi $*" >> "$FAKE_STATE/calls.log"
d=$FAKE_STATE/smi
if [ -e "$d/fail" ]; then cat "$d/fail"; exit 17; fi
case "$*" in
  "--query-gpu=index,uuid,memory.total,memory.used,memory.free --format=csv,noheader,nounits")
    cat "$d/query-gpu" ;;
  "--query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits")
    cat "$d/compute-apps" ;;
  *) echo "nvidia-smi stand-in: unexpected $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        # This machine's own nvidia-smi, if it has one, stays out of the tests.
        dirs = h.remote.env["PATH"].split(":")
        h.remote.env["PATH"] = ":".join(d for d in dirs if not Path(d, "nvidia-smi").exists())
        yield h


def with_gpu(host: FakeHost, query: str, apps: str) -> None:
    """The stand-in nvidia-smi on PATH, answering with the files QUERY and APPS."""
    smi = host.state / "smi"
    smi.mkdir(exist_ok=True)
    (smi / "query-gpu").write_text((DATA / query).read_text())
    (smi / "compute-apps").write_text((DATA / apps).read_text())
    (host.bin / "nvidia-smi").write_text(SMI)
    (host.bin / "nvidia-smi").chmod(0o755)


def blue_serving_r1(host: FakeHost) -> None:
    """r1 live on blue, its process the (first) pid the compute-apps file names."""
    assert host.deploy("r1", strategy="bluegreen").status == SERVED
    apps = host.state / "smi" / "compute-apps"
    pid = apps.read_text().split(",")[0] if apps.exists() else "4242"
    (host.state / "units" / BLUE / "pid").write_text(pid + "\n")
    calls = host.state / "calls.log"
    calls.write_text("")  # from here on: what the second deploy did


def calls(host: FakeHost) -> list[str]:
    return (host.state / "calls.log").read_text().splitlines()


def said(host: FakeHost) -> str:
    return "\n".join(host.remote.said + host.remote.warned)


def assert_blue_serves_r1(host: FakeHost) -> None:
    assert host.unit(BLUE).active == "active" and host.unit(BLUE).release == "r1"
    assert host.unit(GREEN).active != "active"
    assert host.get() == (200, "release r1")
    assert host.link("current") == "r1"
    assert (host.app_root / "colors" / "LIVE").read_text() == "blue\n"


def test_fits_blue_green_as_always(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-small-model.txt", "compute-apps-h200-small-model.txt")
    blue_serving_r1(host)
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.serving) == (SERVED, "r2")
    assert (
        "GPU 0: 101668 MiB free of 143771 MiB, green needs 41480 MiB (what blue holds now): "
        "two copies fit" in host.remote.said
    )
    log = calls(host)
    # Both colours ran at once: green started while blue still served, blue stopped after.
    assert log.index(f"systemctl restart {GREEN}") < log.index(f"systemctl disable --now {BLUE}")
    assert f"systemctl stop {BLUE}" not in log
    assert any(s.startswith("draining blue") for s in host.remote.said)
    assert host.get() == (200, "release r2")
    assert (host.unit(GREEN).active, host.unit(BLUE).active) == ("active", "inactive")
    assert " deploy r2 ok by=" in host.journal()[-1]
    assert host.journal()[-1].endswith(" previous=r1 colour=green")


def test_short_stops_the_live_colour_first(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    blue_serving_r1(host)
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.serving, outcome.previous) == (SERVED, "r2", "r1")
    assert host.remote.warned == [
        "GPU 0: 14372 MiB free of 143771 MiB, green needs 128776 MiB (what blue holds now): "
        "two copies do not fit: blue stops before green starts "
        "(gpu_memory_when_short='restart'; requests fail until green is healthy)"
    ]
    log = calls(host)
    # Never two copies: blue is stopped before green starts.
    assert log.index(f"systemctl stop {BLUE}") < log.index(f"systemctl restart {GREEN}")
    assert not any(s.startswith("draining") for s in host.remote.said)
    assert host.get() == (200, "release r2")
    assert (host.unit(GREEN).active, host.unit(BLUE).active) == ("active", "inactive")
    assert not host.unit(BLUE).enabled and host.unit(GREEN).enabled
    assert (host.link("current"), host.link("previous")) == ("r2", "r1")
    assert " deploy r2 ok by=" in host.journal()[-1]
    assert host.journal()[-1].endswith(" previous=r1 colour=green gpu-memory-short=stopped-first")
    assert "blue stopped first: GPU memory" in host.remote.said[-1]


def test_short_and_the_release_unhealthy_brings_blue_back(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    blue_serving_r1(host)
    outcome = host.deploy("r2", strategy="bluegreen", behaviour="unhealthy")
    assert (outcome.status, outcome.phase, outcome.serving) == (SWITCHED_BACK, "health", "r1")
    assert "blue was stopped for it (GPU memory) and serves r1 again" in outcome.reason
    log = calls(host)
    assert log.index(f"systemctl stop {BLUE}") < log.index(f"systemctl restart {BLUE}")
    assert_blue_serves_r1(host)
    assert "gpu-memory-short rolled-back-to=r1" in host.journal()[-1]
    assert " deploy r2 failed " in host.journal()[-1]


def test_short_and_the_start_refused_brings_blue_back(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    blue_serving_r1(host)
    host.set_behaviour(GREEN, "refuse")
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.phase, outcome.serving) == (SWITCHED_BACK, "restart", "r1")
    assert_blue_serves_r1(host)


def test_short_and_nginx_refusing_the_config_brings_blue_back(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    blue_serving_r1(host)
    (host.state / "nginx.fail").touch()
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.phase, outcome.serving) == (SWITCHED_BACK, "switch", "r1")
    assert_blue_serves_r1(host)


def test_short_and_blue_not_coming_back_is_a_failed_switch_back(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    blue_serving_r1(host)
    host.set_behaviour(BLUE, "crash")
    outcome = host.deploy("r2", strategy="bluegreen", behaviour="unhealthy")
    assert (outcome.status, outcome.phase) == ("switch-back-failed", "rollback")
    assert "blue (r1) did not come back healthy" in outcome.reason
    assert "also-unhealthy" in host.journal()[-1]


def test_short_with_refuse_changes_nothing(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    blue_serving_r1(host)
    journal = host.journal()
    green_link = host.link("colors/green")
    outcome = host.deploy("r2", strategy="bluegreen", gpu_memory_when_short="refuse")
    assert (outcome.status, outcome.phase) == (FAILED, "gpu")
    assert outcome.reason == (
        "deploy of r2 refused: GPU 0: 14372 MiB free of 143771 MiB, green needs 128776 MiB "
        "(what blue holds now): two copies do not fit and gpu_memory_when_short='refuse'; "
        "nothing was changed (r1 keeps serving on blue)"
    )
    assert_blue_serves_r1(host)
    assert host.link("colors/green") == green_link  # not pointed at r2
    # Only read: nothing started, stopped, enabled or disabled.
    verbs = ("start", "stop", "restart", "enable", "disable", "reload")
    assert [c for c in calls(host) if c.split()[:2][-1] in verbs] == []
    assert host.journal() == journal
    assert not (host.app_root / ".deploy.lock").exists()


def test_the_setting_overrides_the_measurement(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    blue_serving_r1(host)
    outcome = host.deploy("r2", strategy="bluegreen", gpu_memory_needed_mib=12000)
    assert outcome.status == SERVED
    assert any("green needs 12000 MiB (gpu_memory_needed_mib): two copies fit" in s
               for s in host.remote.said)  # fmt: skip
    assert f"systemctl stop {BLUE}" not in calls(host)


def test_no_gpu_unchanged(host: FakeHost) -> None:
    blue_serving_r1(host)
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.serving) == (SERVED, "r2")
    assert "GPU" not in said(host)
    assert not host.remote.warned
    log = calls(host)
    assert log.index(f"systemctl restart {GREEN}") < log.index(f"systemctl disable --now {BLUE}")
    assert host.journal()[-1].endswith("previous=r1 colour=green")


def test_failing_nvidia_smi_says_so_and_keeps_blue_green(host: FakeHost) -> None:
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    (host.state / "smi" / "fail").write_text((DATA / "smi-failed.txt").read_text())
    blue_serving_r1(host)
    outcome = host.deploy("r2", strategy="bluegreen", gpu_memory_when_short="refuse")
    assert (outcome.status, outcome.serving) == (SERVED, "r2")
    assert (
        "GPU memory not checked (nvidia-smi gpus query exited 17: Failed to initialize NVML: "
        "GPU access blocked by the operating system); blue/green as usual" in host.remote.said
    )
    log = calls(host)
    assert log.index(f"systemctl restart {GREEN}") < log.index(f"systemctl disable --now {BLUE}")


def test_first_deploy_is_not_checked(host: FakeHost) -> None:
    # No live colour: nothing to measure (moving from socket/restart is not checked either).
    with_gpu(host, "query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt")
    assert host.deploy("r1", strategy="bluegreen").status == SERVED
    assert not any(c.startswith("nvidia-smi") for c in calls(host))


def test_no_real_nvidia_smi_reachable(host: FakeHost) -> None:
    dirs = host.remote.env["PATH"].split(":")
    assert not any(os.path.exists(os.path.join(d, "nvidia-smi")) for d in dirs)
