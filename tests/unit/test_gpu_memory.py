"""GPU memory as blue/green reads it (ai_deploy.host.gpu_memory): the parsers on each file of
tests/data/gpu/ (captured on a real H200, a few written by hand: see its README), the verdict as
data, and the reading script run by a shell with stand-ins for nvidia-smi and systemctl."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hostkit import LocalRemote

from ai_deploy.host import gpu_memory
from ai_deploy.host.gpu_memory import (
    ComputeApp,
    GpuMemory,
    Reading,
    fit,
    parse_apps,
    parse_gpus,
    parse_mib,
    parse_reading,
)
from ai_deploy.host.settings import Spec
from ai_deploy.project import group_data_defaults

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"
H200 = "GPU-78ff34cd-3f67-b5c1-4197-cddde0e38ad8"
SECOND = "GPU-3f0c9a51-7d2e-4b8a-9c61-0e5d2a7b4c19"


def lines(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def reading(query: str, apps: str, blue: set[int], green: set[int] | None = None) -> Reading:
    return Reading(
        True,
        tuple(parse_gpus(lines(query))),
        tuple(parse_apps(lines(apps))),
        {"blue": frozenset(blue), "green": frozenset(green or set())},
    )


# --- the parsers, file by file ---


@pytest.mark.parametrize(
    ("text", "mib"),
    [("143771", 143771), ("143771 MiB", 143771), (" 518 mib ", 518), ("[N/A]", None),
     ("[Not Supported]", None), ("", None), ("12.5", None), ("-1", None)],
)  # fmt: skip
def test_parse_mib(text: str, mib: int | None) -> None:
    assert parse_mib(text) == mib


def test_parse_gpus_h200_nounits_and_units_read_the_same() -> None:
    expected = [GpuMemory(0, H200, 143771, 128785, 14372)]
    assert parse_gpus(lines("query-gpu-h200-vllm.txt")) == expected
    assert parse_gpus(lines("query-gpu-h200-units.txt")) == expected
    assert parse_gpus(lines("query-gpu-h200-small-model.txt")) == [
        GpuMemory(0, H200, 143771, 41489, 101668)
    ]
    assert parse_gpus(lines("query-gpu-h200-idle.txt")) == [GpuMemory(0, H200, 143771, 0, 143156)]


def test_parse_gpus_na_two_gpus_and_junk() -> None:
    assert parse_gpus(lines("query-gpu-na.txt")) == [GpuMemory(0, H200, 143771, None, None)]
    assert parse_gpus(lines("query-gpu-two-h200.txt")) == [
        GpuMemory(0, H200, 143771, 65330, 77881),
        GpuMemory(1, SECOND, 143771, 65330, 77881),
    ]
    assert parse_gpus(lines("smi-failed.txt")) == []
    assert parse_gpus(["", "index, uuid, memory.total", "0, x, 1, 2"]) == []


def test_parse_apps_each_file() -> None:
    assert parse_apps(lines("compute-apps-h200-vllm.txt")) == [ComputeApp(535, H200, 128776)]
    assert parse_apps(lines("compute-apps-h200-units.txt")) == [ComputeApp(535, H200, 128776)]
    assert parse_apps(lines("compute-apps-h200-small-model.txt")) == [ComputeApp(476, H200, 41480)]
    assert parse_apps(lines("compute-apps-h200-vllm-engine-child.txt")) == [
        ComputeApp(588, H200, 520),
        ComputeApp(613, H200, 128264),
    ]
    assert parse_apps(lines("compute-apps-na.txt")) == [ComputeApp(48213, H200, None)]
    assert parse_apps(lines("compute-apps-none.txt")) == []
    assert parse_apps(lines("compute-apps-two-h200.txt")) == [
        ComputeApp(48213, H200, 64770),
        ComputeApp(48213, SECOND, 64770),
    ]
    assert parse_apps(["No running processes found", *lines("smi-failed.txt")]) == []


def test_parse_reading_sections_rc_and_pids() -> None:
    out = [
        "== gpus",
        *lines("query-gpu-h200-vllm-engine-child.txt"),
        "== gpus-rc 0",
        "== apps",
        *lines("compute-apps-h200-vllm-engine-child.txt"),
        "== apps-rc 0",
        "== unit blue",
        "588",
        "588",
        "613",
        "== unit green",
        "0",
    ]
    r = parse_reading(out)
    assert (r.has_smi, r.error) == (True, "")
    assert r.pids == {"blue": frozenset({588, 613}), "green": frozenset()}
    assert r.use("blue", r.gpus[0]) == (128784, False)
    assert parse_reading(["== no-smi"]) == Reading(has_smi=False)


def test_parse_reading_failing_smi_is_an_error_naming_its_message() -> None:
    out = ["== gpus", *lines("smi-failed.txt"), "== gpus-rc 17", "== apps", "== apps-rc 17"]
    r = parse_reading(out)
    assert r.error == (
        "nvidia-smi gpus query exited 17: "
        "Failed to initialize NVML: GPU access blocked by the operating system"
    )
    ok_but_empty = parse_reading(["== gpus", "== gpus-rc 0", "== apps", "== apps-rc 0"])
    assert ok_but_empty.error == "nvidia-smi listed no GPU"


# --- the verdict ---


def test_small_model_fits() -> None:
    r = reading("query-gpu-h200-small-model.txt", "compute-apps-h200-small-model.txt", {476})
    verdict = fit(r, "blue", "green", None)
    assert verdict.fits is True
    assert verdict.message == (
        "GPU 0: 101668 MiB free of 143771 MiB, green needs 41480 MiB (what blue holds now): "
        "two copies fit"
    )


def test_vllm_does_not_fit_with_units_or_without() -> None:
    for query, apps in (
        ("query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt"),
        ("query-gpu-h200-units.txt", "compute-apps-h200-units.txt"),
    ):
        verdict = fit(reading(query, apps, {535}), "blue", "green", None)
        assert verdict.fits is False
        assert verdict.message == (
            "GPU 0: 14372 MiB free of 143771 MiB, green needs 128776 MiB (what blue holds "
            "now): two copies do not fit"
        )


def test_a_child_process_found_in_the_cgroup_counts() -> None:
    apps = "compute-apps-h200-vllm-engine-child.txt"
    main_only = reading("query-gpu-h200-vllm-engine-child.txt", apps, {588})
    assert fit(main_only, "blue", "green", None).fits is True  # 520 MiB: why the cgroup matters
    with_child = reading("query-gpu-h200-vllm-engine-child.txt", apps, {588, 613})
    assert fit(with_child, "blue", "green", None).fits is False


def test_what_the_idle_colour_holds_is_freed_by_its_restart() -> None:
    # An interrupted deploy left green running: its memory is free once it restarts.
    r = reading("query-gpu-h200-vllm-engine-child.txt", "compute-apps-h200-vllm-engine-child.txt",
                {588}, {613})  # fmt: skip
    verdict = fit(r, "blue", "green", None)
    assert verdict.fits is True
    assert "14358 MiB free + 128264 MiB green holds of 143771 MiB" in verdict.message


def test_the_setting_replaces_the_measurement() -> None:
    r = reading("query-gpu-h200-vllm.txt", "compute-apps-h200-vllm.txt", {535})
    assert fit(r, "blue", "green", 14372).fits is True
    short = fit(r, "blue", "green", 14373)
    assert short.fits is False
    assert "green needs 14373 MiB (gpu_memory_needed_mib)" in short.message
    # Which GPU the release uses is unknown (blue holds none): the amount is needed on each.
    idle = reading("query-gpu-h200-idle.txt", "compute-apps-none.txt", {48213})
    assert fit(idle, "blue", "green", 143156).fits is True
    assert fit(idle, "blue", "green", 143157).fits is False


def test_two_gpus_are_judged_each_on_its_own() -> None:
    r = reading("query-gpu-two-h200.txt", "compute-apps-two-h200.txt", {48213})
    verdict = fit(r, "blue", "green", None)
    assert verdict.fits is True
    assert verdict.message.startswith("GPU 0: 77881 MiB free of 143771 MiB, green needs 64770")
    assert "; GPU 1: 77881 MiB free" in verdict.message
    assert fit(r, "blue", "green", 77882).fits is False


def test_unknown_numbers_give_no_verdict() -> None:
    na_apps = reading("query-gpu-h200-vllm.txt", "compute-apps-na.txt", {48213})
    verdict = fit(na_apps, "blue", "green", None)
    assert verdict.fits is None
    assert "[N/A]" in verdict.message and "gpu_memory_needed_mib" in verdict.message
    # With the setting, the unknown measurement is not needed.
    assert fit(na_apps, "blue", "green", 10000).fits is True
    na_free = reading("query-gpu-na.txt", "compute-apps-h200-vllm.txt", {535})
    assert fit(na_free, "blue", "green", None).fits is None


def test_blue_holding_nothing_fits_and_says_so() -> None:
    r = reading("query-gpu-h200-idle.txt", "compute-apps-none.txt", {48213})
    verdict = fit(r, "blue", "green", None)
    assert verdict.fits is True
    assert "blue's processes hold none" in verdict.message


def test_no_smi_says_nothing_and_a_failing_one_says_why() -> None:
    assert fit(Reading(has_smi=False), "blue", "green", None) == gpu_memory.Fit(None, "")
    failed = fit(Reading(True, error="nvidia-smi gpus query exited 17: x"), "blue", "green", None)
    assert failed.fits is None
    assert failed.message == (
        "GPU memory not checked (nvidia-smi gpus query exited 17: x); blue/green as usual"
    )


# --- the reading script, run by a shell ---

SMI = """#!/bin/sh
case "$*" in
  "--query-gpu=index,uuid,memory.total,memory.used,memory.free --format=csv,noheader,nounits")
    cat "$FAKE_SMI/query-gpu" ;;
  "--query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits")
    cat "$FAKE_SMI/compute-apps" ;;
  *) echo "nvidia-smi stand-in: unexpected $*" >&2; exit 2 ;;
esac
"""
SYSTEMCTL = """#!/bin/sh
# show -p MainPID|ControlGroup --value UNIT
case "$3" in MainPID) cat "$FAKE_SMI/$5.pid" 2>/dev/null || echo 0 ;; *) echo ;; esac
"""


def script_remote(tmp_path: Path, with_smi: bool = True) -> LocalRemote:
    bin_dir, smi = tmp_path / "bin", tmp_path / "smi"
    bin_dir.mkdir()
    smi.mkdir()
    tools = {"systemctl": SYSTEMCTL, **({"nvidia-smi": SMI} if with_smi else {})}
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # This machine's own nvidia-smi, if it has one, stays out of the way.
    path = [str(bin_dir)] + [
        d for d in os.environ.get("PATH", "").split(":") if d and not Path(d, "nvidia-smi").exists()
    ]
    env = {"PATH": ":".join(path), "FAKE_SMI": str(smi), "LC_ALL": "C"}
    return LocalRemote(tmp_path, env, tmp_path)


def test_script_reads_main_pid_and_the_cgroup(tmp_path: Path) -> None:
    remote = script_remote(tmp_path)
    smi = tmp_path / "smi"
    (smi / "query-gpu").write_text((DATA / "query-gpu-h200-vllm-engine-child.txt").read_text())
    child = DATA / "compute-apps-h200-vllm-engine-child.txt"
    (smi / "compute-apps").write_text(child.read_text())
    (smi / "ai-server@blue.service.pid").write_text("588\n")
    # No ControlGroup from systemctl: the unit's cgroup under system.slice is read.
    cgroup = tmp_path / "cgroup" / "system.slice" / "ai-server@blue.service"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.procs").write_text("588\n613\n")
    units = {"blue": "ai-server@blue.service", "green": "ai-server@green.service"}
    verdict = gpu_memory.check(remote, units, "blue", "green", None, str(tmp_path / "cgroup"))
    assert verdict.fits is False
    assert "green needs 128784 MiB (what blue holds now)" in verdict.message
    (cgroup / "cgroup.procs").unlink()  # MainPID alone: the child's memory is not seen
    assert gpu_memory.check(remote, units, "blue", "green", None, str(tmp_path / "cgroup")).fits


def test_script_without_nvidia_smi(tmp_path: Path) -> None:
    remote = script_remote(tmp_path, with_smi=False)
    result = remote.run(gpu_memory.memory_script({"blue": "ai-server@blue.service"}))
    assert result.ok and result.stdout == ["== no-smi"]


# --- the settings ---


def test_settings_reach_the_spec_with_their_defaults() -> None:
    data = group_data_defaults()
    spec = Spec.from_data(data, release_id="r1")
    assert (spec.gpu_memory_needed_mib, spec.gpu_memory_when_short) == (None, "restart")
    data = {**data, "gpu_memory_needed_mib": "80000", "gpu_memory_when_short": "refuse"}
    spec = Spec.from_data(data, release_id="r1")
    assert (spec.gpu_memory_needed_mib, spec.gpu_memory_when_short) == (80000, "refuse")
