"""The NVIDIA driver: on a host with an NVIDIA GPU (PCI vendor 10de) and no working driver,
install one by gpu_driver_method, reboot and go on in the same run, and verify that
`nvidia-smi -L` lists the GPU. Hosts without a GPU, and GPUs with a working driver, are left
alone. Runs before the release task, so the service only (re)starts once the GPU answers."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from ai_deploy.host.gpu_ops import nvidia_driver_working


@deploy("NVIDIA GPU driver")
def gpu_driver_ready() -> None:
    d = host.data
    if d.gpu_driver == "skip":
        return
    nvidia_driver_working(
        name="Ensure an NVIDIA GPU, if any, has a working driver",
        method=d.gpu_driver_method,
        branch=str(d.gpu_driver_branch),
        command=d.gpu_driver_command,
        installer_url=d.gpu_installer_url,
        sysfs_pci=d.gpu_sysfs_pci,
        reboot_timeout_s=float(d.gpu_reboot_timeout_s),
    )
