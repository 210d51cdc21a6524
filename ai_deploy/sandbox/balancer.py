"""`ai-deploy sandbox lb`: the sandbox's one load balancer, HAProxy (Debian's package) in front
of sandbox hosts named by the user, on the deployer's side of the sandbox network (a loopback
port), configured by ai_deploy.sandbox.lb. It runs as a daemon of its own, not the Debian
service: its config, pid file, admin socket and log live in `<state>/lb/`, and it is ended by
the pid it wrote (checked against its command line), by `sandbox lb --down`, by `sandbox down
--all`, or when `sandbox down` removes the last of its hosts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.sandbox.lb import (
    HAPROXY,
    LOOPBACK,
    START_TIMEOUT_S,
    Backend,
    HealthCheck,
    LoadBalancerError,
    ServerState,
    ask,
    free_port,
    parse_stat,
    render_config,
)
from ai_deploy.sandbox.paths import state_dir
from ai_deploy.sandbox.record import cmdline


def lb_dir() -> Path:
    return state_dir() / "lb"


@dataclass(frozen=True)
class Running:
    """The sandbox load balancer as started: where it listens, how it checks, its hosts."""

    port: int
    check: HealthCheck
    backends: tuple[Backend, ...]
    pid: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def states(self) -> list[ServerState]:
        return parse_stat(ask(lb_dir() / "admin.sock", "show stat"))

    def to_json(self) -> str:
        check = self.check
        return json.dumps(
            {
                "port": self.port,
                "pid": self.pid,
                "check": [check.path, check.port, check.interval_s, check.threshold],
                "backends": [[b.name, b.address, b.port] for b in self.backends],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Running:
        raw = json.loads(text)
        path, port, interval, threshold = raw["check"]
        backends = tuple(Backend(str(n), str(a), int(p)) for n, a, p in raw["backends"])
        return cls(int(raw["port"]), HealthCheck(path, port, interval, threshold), backends,
                   int(raw["pid"]))  # fmt: skip


def running() -> Running | None:
    """The sandbox load balancer when its process is alive (else its leftovers are removed)."""
    record = lb_dir() / "lb.json"
    try:
        lb = Running.from_json(record.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _ours(lb.pid):
        return lb
    shutil.rmtree(lb_dir(), ignore_errors=True)
    return None


def _ours(pid: int) -> bool:
    """True when PID is our HAProxy: its command line names our config."""
    args = cmdline(pid)
    return bool(args) and str(lb_dir() / "haproxy.cfg") in args


def start(backends: list[Backend], check: HealthCheck, port: int | None = None) -> Running:
    """HAProxy in front of BACKENDS, checked by CHECK, on loopback PORT (a free one when None);
    one that was running is stopped first."""
    if shutil.which(HAPROXY) is None:
        raise LoadBalancerError(
            "haproxy is not installed on this machine: `apt-get install -y haproxy`, then again"
        )
    stop()
    directory = lb_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    port = port or free_port()
    pid_file, config = directory / "haproxy.pid", directory / "haproxy.cfg"
    config.write_text(
        render_config(
            backends, check, port=port, admin_socket=directory / "admin.sock", pid_file=pid_file
        )
    )
    with (directory / "haproxy.log").open("wb") as log:
        # -D: a daemon of its own (its parent exits once it runs), not the Debian service
        done = subprocess.run(
            [HAPROXY, "-D", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    pid = _pid_from(pid_file)
    if done.returncode != 0 or pid is None or not _ours(pid):
        text = (directory / "haproxy.log").read_text(errors="replace").strip()
        if pid is not None and _ours(pid):
            os.kill(pid, signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)
        raise LoadBalancerError(
            f"HAProxy did not start on {LOOPBACK}:{port}: {text or 'no output'}"
        )
    lb = Running(port, check, tuple(backends), pid)
    (directory / "lb.json").write_text(lb.to_json() + "\n")
    return lb


def _pid_from(pid_file: Path) -> int | None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None


def stop() -> Running | None:
    """End the sandbox load balancer (by the pid it wrote, when that is still our HAProxy) and
    remove its files; the one that was running, or None."""
    lb = running()
    if lb is not None:
        os.kill(lb.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _ours(lb.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _ours(lb.pid):
            os.kill(lb.pid, signal.SIGKILL)
    shutil.rmtree(lb_dir(), ignore_errors=True)
    return lb
