"""ssh and scp to sandbox hosts as `ubuntu` (the guard checks every address first)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from ai_deploy.sandbox import hosts
from testkit.guard import check_address


def ssh(address: str, command: str, *, timeout: float = 300.0, check: bool = True) -> str:
    return hosts.ssh(check_address(address), command, timeout=timeout, check=check)


def sudo(address: str, command: str, *, timeout: float = 300.0, check: bool = True) -> str:
    return ssh(address, f"sudo -n sh -c {shlex.quote(command)}", timeout=timeout, check=check)


def scp_argv(address: str, local: Path, remote: str) -> list[str]:
    return [
        "scp",
        "-q",
        *hosts.ssh_options(),
        str(local),
        f"ubuntu@{check_address(address)}:{remote}",
    ]


def ssh_argv(address: str, command: str) -> list[str]:
    return ["ssh", *hosts.ssh_options(), f"ubuntu@{check_address(address)}", command]


def put(address: str, local: Path, remote: str, *, timeout: float = 120.0) -> None:
    subprocess.run(
        scp_argv(address, local, remote), check=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def write_file(
    address: str, path: str, text: str, *, mode: str = "644", owner: str = "root"
) -> None:
    """Write TEXT to PATH on the host as root (through sudo), then set its mode and owner."""
    quoted = shlex.quote(path)
    sudo(
        address,
        f"printf '%s' {shlex.quote(text)} > {quoted} && chmod {mode} {quoted} "
        f"&& chown {owner}: {quoted}",
    )
