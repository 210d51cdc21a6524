"""How the deployer reaches sandbox hosts: OpenSSH options, a one-shot `ssh`, and the pyinfra
inventory and known_hosts file that `sandbox up` writes for them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ai_deploy.sandbox.image import SandboxError
from ai_deploy.sandbox.paths import ssh_key_path
from ai_deploy.sandbox.record import Host


def ssh_options() -> list[str]:
    """OpenSSH options for reaching sandbox hosts (clones share host keys: never pin them)."""
    return [
        "-i",
        str(ssh_key_path()),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
    ]


def ssh(address: str, command: str, *, timeout: float = 60.0, check: bool = True) -> str:
    """Run COMMAND as `ubuntu` on a sandbox host and return its stdout."""
    proc = subprocess.run(
        ["ssh", *ssh_options(), f"ubuntu@{address}", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise SandboxError(
            f"ssh ubuntu@{address} {command!r} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def write_known_hosts(path: Path, hosts: list[Host], image: Path) -> None:
    """known_hosts naming each host's address with the base image's host keys."""
    keys = [
        " ".join(p.read_text().split()[:2])
        for p in sorted((image / "etc/ssh").glob("ssh_host_*_key.pub"))
    ]
    path.write_text("".join(f"{h.address} {key}\n" for h in hosts for key in keys))


def write_inventory(path: Path, hosts: list[Host]) -> None:
    """A pyinfra inventory for HOSTS; its file name puts them in the `sandbox` group."""
    key = ssh_key_path()
    entries = []
    for h in hosts:
        data = {
            "ssh_hostname": h.address,
            "ssh_user": "ubuntu",
            "ssh_key": str(key),
            # Every clone has the base image's host keys: known_hosts lists them per address.
            "ssh_known_hosts_file": str(path.parent / "known_hosts"),
            "ssh_strict_host_key_checking": "yes",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        }
        entries.append(f"    ({h.name!r}, {data!r}),")
    body = "\n".join(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        '"""Sandbox hosts written by `ai-deploy sandbox up`; removed by `sandbox down`."""\n\n'
        f"sandbox = [\n{body}\n]\n"
    )
    os.replace(tmp, path)
