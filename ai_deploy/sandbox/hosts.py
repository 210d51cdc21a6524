"""Sandbox hosts: boot, list and remove systemd-nspawn containers from the cached base image.

Each host owns: a state directory (meta.json, overlay upper/work/merged, console.log), a network
namespace with its veth pair, and a supervisor process running systemd-nspawn. `down` removes
all of them; the last `down` also removes the shared nftables table and restores ip_forward.

What is recorded per host lives in `record`, how hosts are reached (ssh, inventory, known_hosts)
in `access`; both are re-exported here, the module callers import.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ai_deploy.sandbox import network
from ai_deploy.sandbox.access import ssh, ssh_options, write_inventory, write_known_hosts
from ai_deploy.sandbox.image import SandboxError, ensure_image, mounts_under, remove_tree
from ai_deploy.sandbox.locking import file_lock
from ai_deploy.sandbox.paths import hosts_dir, inventories_dir, state_dir
from ai_deploy.sandbox.record import (
    SUPERVISOR_MODULE,
    Host,
    cmdline,
    is_our_supervisor,
    list_hosts,
    read_meta,
    write_meta,
)

# The public face of the sandbox: callers (the CLI, tests, bench/) import these from here.
__all__ = [
    "BOOT_TIMEOUT_S",
    "Host",
    "SandboxError",
    "down",
    "list_hosts",
    "ssh",
    "ssh_options",
    "up",
    "wait_ready",
    "write_inventory",
    "write_known_hosts",
]

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# A boot takes seconds; the limit is for a loaded machine (two test workers each booting
# several hosts), where one took over 60 s to serve its first login.
BOOT_TIMEOUT_S = 180.0


def _names_for(count: int, name: str | None, index_hint: int) -> list[str]:
    if name is None:
        return [f"sandbox-{index_hint + i}" for i in range(count)]
    if not NAME_RE.match(name):
        raise SandboxError(
            f"invalid sandbox name {name!r}: use lower-case letters, digits and '-' "
            "(start with a letter, at most 31 characters)"
        )
    return [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]


def _allocate(count: int, name: str | None) -> list[tuple[str, int]]:
    """Reserve names and indexes (caller holds the state lock)."""
    hosts = list_hosts()
    used_idx = {h.index for h in hosts}
    used_idx |= set(network.host_links())
    free = [i for i in range(1, network.MAX_INDEX + 1) if i not in used_idx]
    if len(free) < count:
        raise SandboxError(f"no room for {count} more sandbox hosts; run `ai-deploy sandbox down`")
    names = _names_for(count, name, free[0])
    taken = {h.name for h in hosts} | {p.name for p in hosts_dir().glob("*")}
    clash = sorted(set(names) & taken)
    if clash:
        raise SandboxError(
            f"sandbox host {clash[0]} exists already; pick another --name or "
            f"`ai-deploy sandbox down {clash[0]}`"
        )
    return list(zip(names, free[:count], strict=False))


def _write_identity(merged: Path, name: str) -> None:
    (merged / "etc/hostname").write_text(f"{name}\n")
    (merged / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


def _start(name: str, index: int, image: Path, inventory: Path) -> Host:
    directory = hosts_dir() / name
    upper, work, merged = directory / "upper", directory / "work", directory / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    host = Host(name, index, network.guest_address(index), 0, str(inventory))
    write_meta(host)  # before anything else exists, so a failed start can be torn down
    network.attach_host(index)
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={image},upperdir={upper},workdir={work}",
            str(merged),
        ],
        check=True,
        capture_output=True,
    )
    _write_identity(merged, name)
    console = (directory / "console.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            SUPERVISOR_MODULE,
            "--merged",
            str(merged),
            "--machine",
            name,
            "--netns",
            network.netns_path(index),
            "--pidfile",
            str(directory / "nspawn.pid"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    console.close()
    # Popen may return (vfork) before the kernel has set the new program's arguments, and
    # `running` reads them: wait until they name the supervisor, or a starting host reads as
    # stopped.
    settle = time.monotonic() + 5
    while (
        not is_our_supervisor(proc.pid, name) and proc.poll() is None and time.monotonic() < settle
    ):
        time.sleep(0.01)
    host = Host(name, index, network.guest_address(index), proc.pid, str(inventory))
    write_meta(host)
    return host


def wait_ready(host: Host, timeout: float = BOOT_TIMEOUT_S) -> None:
    """Wait until sshd answers and systemd reports the system `running`."""
    deadline = time.monotonic() + timeout
    while True:
        if not host.running:
            tail = _console_tail(host)
            raise SandboxError(f"sandbox host {host.name} stopped while booting:\n{tail}")
        try:
            with socket.create_connection((host.address, 22), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"sandbox host {host.name} did not open SSH within {timeout:.0f} s:\n"
                    + _console_tail(host)
                ) from None
            time.sleep(0.1)
    # sshd may accept the connection before it serves logins (keys, PAM still starting): an
    # empty answer is an SSH that did not get in, tried again until the deadline.
    why = ""
    while True:
        remaining = max(5.0, deadline - time.monotonic())
        try:
            state = ssh(
                host.address, "systemctl is-system-running --wait", timeout=remaining, check=False
            ).strip()
        except subprocess.TimeoutExpired:
            state, why = "", "ssh did not answer in time"
        if state or time.monotonic() > deadline or not host.running:
            break
        time.sleep(0.5)
    if state == "degraded":
        state = _retry_failed_units(host)
    if state != "running":
        failed = ssh(host.address, "systemctl --failed --no-legend", check=False)
        raise SandboxError(
            f"sandbox host {host.name} booted {state!r} {why}; failed units:\n{failed}\n"
            + _console_tail(host)
        )


# Early-boot oneshots that, with several hosts booting at once on a loaded machine, were seen to
# fail once and work when started again (systemd-remount-fs, systemd-sysusers,
# systemd-user-sessions).
_RETRIED_UNITS = re.compile(r"^systemd-[a-z-]+\.service$")


def _retry_failed_units(host: Host) -> str:
    """A degraded boot whose failed units are all early-boot systemd oneshots: each started
    again once (said on stderr); the system's state afterwards."""
    listed = ssh(host.address, "systemctl --failed --no-legend --plain", check=False)
    units = [line.split()[0] for line in listed.splitlines() if line.split()]
    if not units or not all(_RETRIED_UNITS.match(u) for u in units):
        return "degraded"
    print(f"sandbox host {host.name}: {', '.join(units)} failed at boot; starting again",
          file=sys.stderr)  # fmt: skip
    names = " ".join(units)
    ssh(host.address, f"sudo -n systemctl restart {names}",
        check=False)  # fmt: skip
    return ssh(host.address, "systemctl is-system-running", check=False).strip()


def _console_tail(host: Host, lines: int = 20) -> str:
    try:
        text = (host.directory / "console.log").read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:])


def up(count: int = 1, name: str | None = None) -> tuple[list[Host], Path]:
    """Boot COUNT fresh hosts and write their inventory; returns the hosts and its path."""
    if count < 1:
        raise SandboxError("--count must be at least 1")
    image = ensure_image()
    state_dir().mkdir(parents=True, exist_ok=True)
    hosts: list[Host] = []
    with file_lock(network.RUN_DIR / "sandbox.lock", "sandbox command"):
        slots = _allocate(count, name)
        inventory = inventories_dir() / slots[0][0] / "sandbox.py"
        for host_name, _ in slots:
            (hosts_dir() / host_name).mkdir(parents=True)
        try:
            for host_name, index in slots:
                hosts.append(_start(host_name, index, image, inventory))
        except BaseException:
            _teardown_many([h.name for h in hosts] or [n for n, _ in slots], shared=True)
            raise
    try:
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            list(pool.map(wait_ready, hosts))
        write_inventory(inventory, hosts)
        write_known_hosts(inventory.parent / "known_hosts", hosts, image)
    except BaseException:
        down([h.name for h in hosts])
        raise
    return hosts, inventory


def _kill_container(directory: Path) -> None:
    """SIGKILL the container's PID 1 (and so everything in its PID namespace) if still alive."""
    try:
        pid = int((directory / "init.pid").read_text().strip())
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return
    nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
    if len(nspid) > 1 and nspid[-1] == "1":
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _stop(host: Host, timeout: float = 20.0) -> None:
    if host.supervisor_pid and host.running:
        os.kill(host.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while host.running and time.monotonic() < deadline:
            time.sleep(0.1)
        if host.running:
            os.kill(host.supervisor_pid, signal.SIGKILL)
    pidfile = host.directory / "nspawn.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().strip() or 0)
        args = cmdline(pid)
        if args and args[0].endswith("systemd-nspawn") and str(host.merged) in args:
            os.kill(pid, signal.SIGKILL)
    _kill_container(host.directory)


def _teardown_one(name: str) -> None:
    directory = hosts_dir() / name
    host = read_meta(directory / "meta.json")
    if host is not None:
        _stop(host)
        network.detach_host(host.index)
    for point in mounts_under(directory):
        subprocess.run(["umount", point], check=False, capture_output=True)
    remove_tree(directory)


def _teardown_many(names: list[str], *, shared: bool) -> None:
    for n in names:
        _teardown_one(n)
    if not shared:
        return
    remaining = list_hosts()
    for inv in inventories_dir().glob("*/sandbox.py") if inventories_dir().is_dir() else []:
        text = inv.read_text()
        if not any(repr(h.name) in text for h in remaining):
            remove_tree(inv.parent)
    if not remaining:
        network.detach_host(None)


def down(names: list[str] | None = None) -> list[str]:
    """Remove the named hosts (all when NAMES is None); returns the names removed."""
    with file_lock(network.RUN_DIR / "sandbox.lock", "sandbox command"):
        if names is None:
            _end_orphaned_supervisors()  # before their trees are unmounted under them
        known = [h.name for h in list_hosts()]
        if names is None:
            targets = sorted(set(known) | {p.name for p in hosts_dir().glob("*") if p.is_dir()})
        else:
            unknown = [n for n in names if n not in known and not (hosts_dir() / n).exists()]
            if unknown:
                raise SandboxError(
                    f"no sandbox host named {unknown[0]}; `ai-deploy sandbox list` shows them"
                )
            targets = names
        _teardown_many(targets, shared=True)
        if names is None:
            _sweep_strays()
        return targets


def _orphaned_supervisors() -> list[int]:
    """Supervisors of this state directory whose host has no state left (a teardown that
    could not see them running), newest last."""
    root = str(hosts_dir())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        args = cmdline(int(proc.name))
        if SUPERVISOR_MODULE not in args or "--merged" not in args:
            continue
        merged = args[args.index("--merged") + 1]
        if merged.startswith(root + "/") and not Path(merged).parent.joinpath("meta.json").exists():
            found.append(int(proc.name))
    return sorted(found)


def _end_orphaned_supervisors() -> None:
    for pid in _orphaned_supervisors():
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def _sweep_strays() -> None:
    """After `down --all`: remove namespaces and links of ours that no state names."""
    in_use = {h.index for h in list_hosts()}
    for index in network.host_links():
        if index not in in_use and not _index_claimed_elsewhere(index):
            network.detach_host(index)
    netns = Path("/run/netns")
    for ns in netns.glob("ai-deploy-*") if netns.is_dir() else []:
        suffix = ns.name.split("-")[-1]
        if suffix.isdigit() and int(suffix) not in network.host_links():
            subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)
    network.detach_host(None)


def _index_claimed_elsewhere(index: int) -> bool:
    """True when a live supervisor (from another state directory) uses host INDEX's netns."""
    wanted = network.netns_path(index)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            args = cmdline(int(proc.name))
            if SUPERVISOR_MODULE in args and wanted in args:
                return True
    return False
