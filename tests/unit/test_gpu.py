"""GPU detection and driver verification, fed outputs captured on a real H200 machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_deploy.host import gpu

pytestmark = pytest.mark.unit
DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"


def _probe(name: str) -> gpu.GpuReport:
    return gpu.parse_probe((DATA / name).read_text().splitlines())


def test_gpu_host_with_working_driver() -> None:
    report = _probe("probe-gpu-host.txt")
    assert [p.slot for p in report.pci] == ["0000:00:06.0"]
    assert report.pci[0].pci_class == "0x030200"
    assert report.has_gpu and report.driver_ok
    assert report.smi_path == "/usr/local/nvidia/bin/nvidia-smi"
    (card,) = report.gpus
    assert card.name == "NVIDIA H200"
    assert card.uuid.startswith("GPU-")
    assert card.memory_total == "143771 MiB"
    assert report.driver_version == "580.159.04"
    assert report.summary() == "NVIDIA H200 (143771 MiB); driver 580.159.04"


def test_gpu_on_pci_but_driver_broken() -> None:
    report = _probe("probe-driver-broken.txt")
    assert report.has_gpu
    assert not report.driver_ok
    assert report.smi_rc == 17
    assert "Failed to initialize NVML" in report.smi_error
    assert "driver not working" in report.summary()


def test_machine_without_nvidia_devices() -> None:
    lines = [
        "== pci",
        "0000:00:00.0 0x8086 0x0d57 0x060000",
        "0000:00:03.0 0x1af4 0x1041 0x020000",
        "== smi",
        "== kernel",
        "release 6.1.0",
        "headers present",
    ]
    report = gpu.parse_probe(lines)
    assert not report.has_gpu
    assert report.summary() == "no NVIDIA GPU"
    assert report.headers_present is True


def test_nvidia_audio_function_is_not_a_gpu() -> None:
    # Consumer cards expose an HDMI audio function with vendor 10de and class 0x0403.
    assert gpu.parse_pci(["0000:01:00.1 0x10de 0x10f0 0x040300"]) == []


def test_lspci_fallback() -> None:
    line = "00:06.0 3D controller [0302]: NVIDIA Corporation GH100 [10de:2335] (rev a1)"
    (found,) = gpu.parse_lspci([line])
    assert found.device == "0x2335"


def test_probe_runs_here_and_finds_no_gpu() -> None:
    report = gpu.probe_local()
    assert report.kernel
    assert not report.has_gpu
