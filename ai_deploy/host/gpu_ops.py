"""pyinfra facts and operations for the NVIDIA driver: the GPU probe as a fact, a reboot that
waits for the host to come back (confirmed by a marker in /run, which every boot empties, so it
also works where uptime is the machine's, as in containers), the driver install by the chosen
method with reboots handled in the same run, and the verification that `nvidia-smi -L` lists a
GPU UUID."""

from __future__ import annotations

import shlex
import time
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand, OperationError, StringCommand, operation

from ai_deploy.host.event_hooks import ERROR, tell
from ai_deploy.host.gpu import GpuReport, parse_probe, probe_script

REBOOT_MARKER = "/run/ai-deploy-before-reboot"


class GpuFact(FactBase[GpuReport]):
    """What the read-only GPU probe finds (see ai_deploy.host.gpu)."""

    def command(self, sysfs_pci: str) -> str:  # type: ignore[override]
        return probe_script(sysfs_pci)

    def process(self, output: list[str]) -> GpuReport:  # type: ignore[override]
        return parse_probe([str(line) for line in output])


def _say(h: Any, message: str) -> None:
    tell(h, message)


def _fail(h: Any, message: str) -> bool:
    tell(h, message, ERROR)
    return False


def _run(h: Any, script: str, timeout: float = 600) -> tuple[bool, list[str]]:
    ok, out = h.run_shell_command(StringCommand(script), _sudo=True, _timeout=timeout)
    return ok, list(out.stdout_lines) + list(out.stderr_lines)


def reboot_and_wait(h: Any, timeout_s: float, why: str) -> bool:
    """Reboot H, then reconnect until a boot has emptied /run (or fail after TIMEOUT_S)."""
    _say(h, f"rebooting: {why}")
    _run(h, f"touch {REBOOT_MARKER}")
    h.run_shell_command(
        StringCommand("sh -c '( sleep 1 && systemctl reboot ) </dev/null >/dev/null 2>&1 &'"),
        _sudo=True,
    )
    time.sleep(3)
    return wait_for_return(h, timeout_s)


def _still_up(h: Any) -> bool:
    """True when H answers and has not rebooted since REBOOT_MARKER was written."""
    try:
        ok, _ = _run(h, f"test -e {REBOOT_MARKER}", timeout=30)
    except Exception:  # the connection went with the reboot
        return False
    return ok


def wait_for_return(h: Any, timeout_s: float) -> bool:
    """Reconnect to H until it has booted again (REBOOT_MARKER gone), at most TIMEOUT_S."""
    h.disconnect()
    started = time.monotonic()
    next_note = started + 10
    while time.monotonic() - started < timeout_s:
        h.connect(show_errors=False)
        if h.connected:
            try:
                ok, _ = _run(h, f"test ! -e {REBOOT_MARKER}", timeout=30)
            except Exception:
                ok = False
            if ok:
                _say(h, f"back after the reboot ({time.monotonic() - started:.0f} s)")
                return True
            h.disconnect()
        if time.monotonic() >= next_note:
            _say(h, f"waiting for the host to come back: {time.monotonic() - started:.0f} s")
            next_note += 10
        time.sleep(1)
    return _fail(h, f"the host did not come back within {timeout_s:.0f} s of the reboot")


def _probe(h: Any, sysfs_pci: str) -> GpuReport:
    _, out = h.run_shell_command(StringCommand(probe_script(sysfs_pci)), _sudo=True, _timeout=60)
    return parse_probe(list(out.stdout_lines))


def _verify(h: Any, sysfs_pci: str) -> bool:
    report = _probe(h, sysfs_pci)
    if report.driver_ok:
        _say(h, f"GPU verified with nvidia-smi -L: {report.summary()}")
        return True
    return _fail(
        h,
        "the NVIDIA driver does not work after the install: "
        + (report.smi_error or "nvidia-smi lists no GPU UUID")
        + " (see the install output above; `nvidia-smi -L` must list a GPU)",
    )


def _headers(h: Any, kernel: str) -> bool:
    package = f"linux-headers-{kernel}"
    ok, out = _run(h, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {package} 2>&1")
    if not ok:
        tail = " ".join(out[-3:])
        return _fail(
            h,
            f"the kernel headers package {package} is needed to build the NVIDIA module and "
            f"could not be installed: {tail}",
        )
    return True


def _install(
    state: Any,
    host: Any,  # pyinfra passes state and host by these names
    method: str,
    settings: dict[str, Any],
    report: GpuReport,
) -> bool:
    h = host
    timeout = float(settings["reboot_timeout_s"])
    sysfs = settings["sysfs_pci"]
    if method == "cuda-installer":
        if report.headers_present is False and not _headers(h, report.kernel):
            return False
        target = "/opt/google/cuda-installer/cuda_installer.pyz"
        url = shlex.quote(settings["installer_url"])
        ok, out = _run(
            h,
            f"mkdir -p /opt/google/cuda-installer && curl -fsSL -o {target}.tmp {url} && "
            f"mv {target}.tmp {target}",
        )
        if not ok:
            return _fail(h, f"could not download the GPU installer: {' '.join(out[-3:])}")
        # The installer reboots the VM itself and must be run again after each reboot.
        for round_no in range(1, 4):
            _say(h, f"running cuda_installer.pyz install_driver (round {round_no})")
            _run(h, f"touch {REBOOT_MARKER}")
            try:
                _, out = _run(h, f"python3 {target} install_driver 2>&1", timeout=3600)
            except Exception:  # the installer rebooted the host under us
                out = ["(the connection closed: the installer is rebooting the host)"]
            for line in out[-5:]:
                _say(h, f"  {line}")
            if _still_up(h):
                if _verify_quiet(h, sysfs):
                    return _verify(h, sysfs)
                if not reboot_and_wait(h, timeout, "the installer asks for a reboot"):
                    return False
            elif not wait_for_return(h, timeout):
                return False
        return _verify(h, sysfs)
    if method in ("ubuntu-drivers", "packages"):
        if report.headers_present is False and not _headers(h, report.kernel):
            return False
        branch = shlex.quote(str(settings["branch"]))
        if method == "ubuntu-drivers":
            script = (
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q ubuntu-drivers-common && "
                f"ubuntu-drivers install --gpgpu nvidia:{branch}-server"
            )
        else:
            script = (
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                f"nvidia-driver-{branch}-server nvidia-utils-{branch}-server"
            )
        ok, out = _run(h, script + " 2>&1", timeout=3600)
        if not ok:
            return _fail(h, f"the driver install ({method}) failed: {' '.join(out[-5:])}")
    elif method == "command":
        command = settings.get("command")
        if not command:
            return _fail(h, "gpu_driver_method is 'command' but gpu_driver_command is not set")
        ok, out = _run(h, f"{command} 2>&1", timeout=3600)
        for line in out[-5:]:
            _say(h, f"  {line}")
        if not ok:
            return _fail(h, f"gpu_driver_command failed: {' '.join(out[-3:])}")
    else:
        return _fail(h, f"unknown gpu_driver_method {method!r}")
    if not reboot_and_wait(h, timeout, "the NVIDIA kernel module loads at boot"):
        return False
    return _verify(h, sysfs)


def _verify_quiet(h: Any, sysfs_pci: str) -> bool:
    return _probe(h, sysfs_pci).driver_ok


@operation()
def nvidia_driver_working(
    method: str = "cuda-installer",
    branch: str = "570",
    command: str | None = None,
    installer_url: str = "",
    sysfs_pci: str = "/sys/bus/pci/devices",
    reboot_timeout_s: float = 600,
):
    """
    Ensure an NVIDIA GPU, when the host has one, answers through a working driver.

    + method: cuda-installer (Google's cuda_installer.pyz), ubuntu-drivers, packages
      (nvidia-driver-<branch>-server) or command (gpu_driver_command)
    + branch: the driver branch for ubuntu-drivers and packages
    + command: the install command for method "command"
    + installer_url: where cuda_installer.pyz is downloaded from (by the host)
    + sysfs_pci: where PCI devices are read from
    + reboot_timeout_s: how long to wait for the host after a reboot

    No GPU: nothing happens. A working driver: nothing happens, no reboot. Otherwise the
    driver is installed, the host rebooted (the run waits and goes on), and `nvidia-smi -L`
    must list a GPU UUID.
    """
    report = host.get_fact(GpuFact, sysfs_pci=sysfs_pci, _sudo=True)
    if not report.has_gpu:
        _say(host, "no NVIDIA GPU: nothing to do")
        host.noop("no NVIDIA GPU")
        return
    if report.driver_ok:
        _say(host, f"NVIDIA driver works: {report.summary()}")
        host.noop(f"NVIDIA driver works: {report.summary()}")
        return
    if report.secure_boot:
        raise OperationError(
            f"{host.name}: Secure Boot is enabled, so an unsigned NVIDIA kernel module will not "
            "load: turn Secure Boot off in the VM's Shielded VM settings, or install a signed "
            "driver by hand, then run the deploy again"
        )
    settings = {
        "branch": branch,
        "command": command,
        "installer_url": installer_url,
        "sysfs_pci": sysfs_pci,
        "reboot_timeout_s": reboot_timeout_s,
    }
    yield FunctionCommand(_install, (method, settings, report), {})
