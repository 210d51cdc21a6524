"""The process that keeps one sandbox host's container running.

Started detached by `sandbox up`, it runs systemd-nspawn and starts it again, with the same
overlay and network namespace, when the guest reboots (nspawn exits with status 133). SIGTERM
is passed on to nspawn, which powers the guest off cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REBOOT_STATUS = 133


def nspawn_command(merged: Path, machine: str, netns: str) -> list[str]:
    return [
        "systemd-nspawn",
        "-q",
        "-D",
        str(merged),
        "-b",
        "-M",
        machine,
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path={netns}",
        "--resolv-conf=copy-host",
        "--timezone=off",
    ]


def container_init(nspawn_pid: int) -> int | None:
    """The container's PID 1 as this machine sees it: nspawn's child that is PID 1 inside."""
    for task in Path(f"/proc/{nspawn_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next(
                (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), []
            )
            if len(nspid) > 1 and nspid[-1] == "1":
                return int(pid)
    return None


def _record_init(child: subprocess.Popen[bytes], path: Path, wait_s: float = 10.0) -> None:
    """Write the container's PID 1 to PATH, so that `down` can end the whole container even
    when nspawn itself was killed (killing a PID namespace's init ends everything in it)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and child.poll() is None:
        pid = container_init(child.pid)
        if pid:
            path.write_text(f"{pid}\n")
            return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--merged", required=True, type=Path)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--pidfile", required=True, type=Path)
    args = parser.parse_args(argv)

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
    while True:
        child = subprocess.Popen(
            nspawn_command(args.merged, args.machine, args.netns),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        args.pidfile.write_text(f"{child.pid}\n")
        _record_init(child, args.pidfile.with_name("init.pid"))
        status = child.wait()
        print(f"[supervisor] nspawn exited with status {status}", flush=True)
        if stopping or status != REBOOT_STATUS:
            return 0 if stopping else status
        print("[supervisor] guest rebooted; starting it again", flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
