"""The GPU task on sandbox hosts.

What is real: the probe script runs on the host, pyinfra drives the install path, the host
really reboots in the middle of the run (systemd-nspawn exits with 133 and the sandbox boots
the same container again), the run reconnects and goes on, and the service is deployed after.

What is simulated, because a container cannot load a kernel module and has no GPU: the PCI
devices are read from a directory the test writes (gpu_sysfs_pci) holding the devices captured
on a real H200 machine, and "installing the driver" (gpu_driver_method=command) installs a
stand-in nvidia-smi that prints the outputs captured on that machine (tests/data/gpu/).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import requests

from ai_deploy.artifact.build import build_artifact
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import APP_ROOT, example_artifact, grand_total, run_deploy

pytestmark = pytest.mark.e2e
DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"
REPO = Path(__file__).resolve().parents[2]
FAKE_PCI = "/var/lib/test-fake-pci"
STANDIN = "/opt/test-driver/nvidia-smi"


def _sections(name: str) -> tuple[list[str], list[str], list[str]]:
    """PCI lines, `nvidia-smi -L` lines and query lines from a captured probe output."""
    pci: list[str] = []
    listing: list[str] = []
    query: list[str] = []
    part = ""
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("== ") or line.startswith("-- "):
            part = line[3:]
            continue
        if part == "pci":
            pci.append(line)
        elif part == "list" and not line.startswith("rc "):
            listing.append(line)
        elif part == "query":
            query.append(line)
    return pci, listing, query


def _standin(name: str, exit_code: int) -> str:
    _, listing, query = _sections(name)
    return (
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  -L) cat <<'EOF'\n" + "\n".join(listing) + f"\nEOF\n  exit {exit_code} ;;\n"
        "  --query-gpu=*) cat <<'EOF'\n" + "\n".join(query) + f"\nEOF\n  exit {exit_code} ;;\n"
        "esac\n"
    )


def _fake_gpu_host(sandbox: Sandbox, capture: str, exit_code: int) -> None:
    pci, _, _ = _sections(capture)
    lines = [f"rm -rf {FAKE_PCI} /usr/local/nvidia", f"mkdir -p {FAKE_PCI} /opt/test-driver"]
    for entry in pci:
        slot, vendor, device, cls = entry.split()
        d = f"{FAKE_PCI}/{slot}"
        lines.append(
            f"mkdir -p {d} && echo {vendor} > {d}/vendor && echo {device} > {d}/device && "
            f"echo {cls} > {d}/class"
        )
    lines.append(f"cat > {STANDIN} <<'STANDIN'\n{_standin(capture, exit_code)}STANDIN")
    lines.append(f"chmod 755 {STANDIN}")
    sandbox.sudo("\n".join(lines))


def _gpu_data() -> list[str]:
    install = f"install -D -m 0755 {STANDIN} /usr/local/nvidia/bin/nvidia-smi"
    return [
        f"gpu_sysfs_pci={FAKE_PCI}",
        "gpu_driver_method=command",
        f"gpu_driver_command={install}",
        "gpu_reboot_timeout_s=120",
    ]


def _boot_id(sandbox: Sandbox) -> str:
    # /proc/sys/kernel/random/boot_id is the machine's; PID 1's start time is the guest's.
    return sandbox.ssh("stat -c %Z /proc/1").strip()


def test_host_without_gpu_changes_nothing_twice(sandbox: Sandbox) -> None:
    for _ in range(2):
        result = run_deploy(sandbox.inventory)
        assert result.returncode == 0, result.stdout[-3000:]
        block = result.stdout.split("Ensure an NVIDIA GPU, if any, has a working driver")[1]
        assert "no NVIDIA GPU" in block.split("--> Starting operation")[0]
    assert grand_total(result.stdout).success == 0


def test_install_path_reboots_mid_run_and_continues(fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox = fresh_sandbox
    _fake_gpu_host(sandbox, "probe-gpu-host.txt", 0)
    artifact = build_artifact(REPO / "examples" / "ai-server", tmp_path)
    before = _boot_id(sandbox)
    result = run_deploy(sandbox.inventory, f"artifact={artifact}", *_gpu_data())
    out = result.stdout
    assert result.returncode == 0, out[-4000:]
    assert "rebooting: the NVIDIA kernel module loads at boot" in out
    assert "back after the reboot" in out
    assert "GPU verified with nvidia-smi -L: NVIDIA H200 (143771 MiB); driver 580.159.04" in out
    # The order in the run: the GPU answered before the release was put in service.
    assert out.index("GPU verified") < out.index("current -> releases/")
    assert _boot_id(sandbox) != before, "the host did not really reboot"
    health = requests.get(f"http://{sandbox.address}:8000/health", timeout=5)
    assert health.status_code == 200
    assert sandbox.ssh("systemctl is-active ai-server").strip() == "active"
    assert _service_started_at(sandbox) != "0"  # what the failing-driver test reads as "0"

    # A GPU host whose driver works: no change, no reboot.
    booted = _boot_id(sandbox)
    again = run_deploy(sandbox.inventory, f"artifact={artifact}", *_gpu_data())
    assert again.returncode == 0, again.stdout[-3000:]
    assert "NVIDIA driver works: NVIDIA H200" in again.stdout
    assert "rebooting" not in again.stdout
    assert grand_total(again.stdout).success == 0
    assert _boot_id(sandbox) == booted


def _service_started_at(sandbox: Sandbox) -> str:
    """When ai-server last entered `active` (monotonic µs; "0": never since boot)."""
    return sandbox.ssh("systemctl show -p ActiveEnterTimestampMonotonic --value ai-server").strip()


def test_driver_that_does_not_answer_fails_clearly(fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox = fresh_sandbox
    _fake_gpu_host(sandbox, "probe-driver-broken.txt", 17)
    # With an artifact, a run that went on past the GPU task would put it in service.
    artifact = example_artifact(tmp_path)
    result = run_deploy(sandbox.inventory, artifact.data, *_gpu_data())
    assert result.returncode != 0
    assert "the NVIDIA driver does not work after the install" in result.stdout
    assert "Failed to initialize NVML" in result.stdout
    # Nothing after the GPU task ran: the release was never put in service, the service
    # never started.
    assert "current -> releases/" not in result.stdout
    assert sandbox.sudo(f"test -L {APP_ROOT}/current && echo linked || echo none") == "none\n"
    assert _service_started_at(sandbox) == "0", result.stdout[-3000:]


def test_secure_boot_on_install_path_is_named(fresh_sandbox: Sandbox) -> None:
    sandbox = fresh_sandbox
    _fake_gpu_host(sandbox, "probe-driver-broken.txt", 17)
    # mokutil as a Secure Boot machine answers it.
    sandbox.sudo(
        "printf '#!/bin/sh\\necho SecureBoot enabled\\n' > /usr/local/bin/mokutil && "
        "chmod 755 /usr/local/bin/mokutil"
    )
    result = run_deploy(sandbox.inventory, *_gpu_data())
    assert result.returncode != 0
    assert "Secure Boot is enabled" in result.stdout
    assert sandbox.sudo(f"ls {shlex.quote('/usr/local/nvidia/bin')} 2>/dev/null || true") == ""


def test_missing_kernel_headers_on_the_install_path_are_named(fresh_sandbox: Sandbox) -> None:
    """method `packages` on a GPU host whose kernel has no headers package to install (the
    sandbox runs the machine's kernel, for which the guest's archive has none): a clear error
    naming the package, and no driver installed."""
    sandbox = fresh_sandbox
    _fake_gpu_host(sandbox, "probe-driver-broken.txt", 17)
    kernel = sandbox.ssh("uname -r").strip()
    result = run_deploy(
        sandbox.inventory,
        f"gpu_sysfs_pci={FAKE_PCI}",
        "gpu_driver_method=packages",
        "gpu_reboot_timeout_s=60",
    )
    assert result.returncode != 0
    assert f"the kernel headers package linux-headers-{kernel} is needed" in result.stdout
    assert "rebooting" not in result.stdout
    assert sandbox.ssh("dpkg -l 'nvidia-driver-*' 2>/dev/null | grep -c ^ii || true").strip() == "0"
