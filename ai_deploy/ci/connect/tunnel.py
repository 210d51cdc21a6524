"""The IAP tunnel for one run: `gcloud compute start-iap-tunnel INSTANCE 22
--local-host-port=localhost:0` started in the background, the local port it listens on read from
its output ("Listening on port [N]."), and the process ended on every exit of the run.

ssh and pyinfra then connect to 127.0.0.1:N like any host. (pyinfra's paramiko connection
through a ProxyCommand stops after key exchange when pyinfra runs without a controlling
terminal, as the CI entry runs it; a plain local port has no such problem.)

Each tunnel is recorded (its process and the run's, by pid and start time) in a directory
only this user can write, and the record removed when the tunnel ends. A run killed with
SIGKILL cannot end its tunnels: the next run finds their records, sees the run that started
them gone, and ends them (`sweep_left_tunnels`)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.ci.options import PhaseFailed
from ai_deploy.gcp.iap import IapError, tunnel_argv

LISTENING_RE = re.compile(r"Listening on port \[(\d+)\]")
LOCAL_HOST = "127.0.0.1"
STOP_WAIT_S = 5.0
TUNNELS_DIR_ENV = "AI_DEPLOY_TUNNELS_DIR"  # where tunnels are recorded (default: see below)


@dataclass(frozen=True)
class Tunnel:
    """Where the instance's port 22 answers for this run."""

    instance: str
    host: str
    port: int

    @property
    def known_hosts_name(self) -> str:
        """How ssh and paramiko name this endpoint in known_hosts (a port other than 22)."""
        return f"[{self.host}]:{self.port}"


def _pump(stream: object, lines: queue.Queue[str | None], keep: list[str]) -> None:
    """Every line of gcloud's output to LINES (while someone waits) and the last ones to KEEP;
    read to the end, so gcloud never blocks on a full pipe."""
    for line in stream:  # type: ignore[attr-defined]
        keep.append(line.rstrip("\n"))
        del keep[:-20]
        lines.put(line)
    lines.put(None)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, STOP_WAIT_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def iap_tunnel(
    instance: str,
    zone: str,
    project: str,
    *,
    wait_s: float,
    environ: Mapping[str, str],
    say: Callable[[str], None] = print,
) -> Iterator[Tunnel]:
    """gcloud's IAP tunnel to INSTANCE:22 on a local port, for the duration of the block."""
    try:
        argv = tunnel_argv(instance, zone, project)
    except IapError as exc:
        raise PhaseFailed("config", str(exc)) from exc
    gcloud = shutil.which("gcloud", path=environ.get("PATH"))
    if gcloud is None:
        raise PhaseFailed(
            "config",
            "AI_DEPLOY_SSH_TRANSPORT=iap runs `gcloud compute start-iap-tunnel`, and gcloud is "
            "not on PATH: install the Cloud SDK (GitHub's ubuntu runners have it; elsewhere "
            "google-github-actions/setup-gcloud) or use the firewall window (direct)",
        )
    proc = subprocess.Popen(
        [gcloud, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(environ),
        start_new_session=True,  # ended by us, after pyinfra has released the host's lock
    )
    record = _record(proc, instance, environ)
    try:
        lines: queue.Queue[str | None] = queue.Queue()
        last: list[str] = []
        threading.Thread(target=_pump, args=(proc.stdout, lines, last), daemon=True).start()
        port = _wait_for_port(proc, lines, last, wait_s, instance)
        say(f"IAP tunnel to {instance}:22 listens on {LOCAL_HOST}:{port}")
        yield Tunnel(instance, LOCAL_HOST, port)
    finally:
        _stop(proc)
        record.unlink(missing_ok=True)


def tunnels_dir(environ: Mapping[str, str]) -> Path:
    """Where this user's runs record their tunnels: AI_DEPLOY_TUNNELS_DIR, else
    $XDG_RUNTIME_DIR/ai-deploy-tunnels, else ai-deploy-tunnels-UID in the temporary directory."""
    own = environ.get(TUNNELS_DIR_ENV, "").strip()
    if own:
        return Path(own)
    runtime = environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime:
        return Path(runtime) / "ai-deploy-tunnels"
    return Path(tempfile.gettempdir()) / f"ai-deploy-tunnels-{os.getuid()}"


def _started(pid: int) -> str | None:
    """PID's start time (field 22 of /proc/PID/stat; "" where there is no /proc), or None
    when no such process exists: with the pid, it names one process, never a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _record(proc: subprocess.Popen[str], instance: str, environ: Mapping[str, str]) -> Path:
    directory = tunnels_dir(environ)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{proc.pid}.json"
    me = os.getpid()
    record = {
        "instance": instance,
        "pid": proc.pid,
        "started": _started(proc.pid),
        "run": me,
        "run_started": _started(me),
    }
    # Whole or not at all: a run killed while it writes must not leave a record the next run
    # cannot read (its tunnel would never be ended). The sweep reads only *.json.
    partial = directory / f".{proc.pid}.json.partial"
    partial.write_text(json.dumps(record))
    os.replace(partial, path)
    return path


def sweep_left_tunnels(environ: Mapping[str, str], say: Callable[[str], None] = print) -> None:
    """End every tunnel whose run is gone (killed with SIGKILL before it could end them)."""
    directory = tunnels_dir(environ)
    if not directory.is_dir() or directory.stat().st_uid != os.getuid():
        return  # none recorded, or not this user's records: nothing of ours to end
    for path in sorted(directory.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            pid, run = int(rec["pid"]), int(rec["run"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _started(run) == rec.get("run_started") and _started(run) is not None:
            continue  # its run is alive: its tunnel is in use
        if _started(pid) == rec.get("started") and _started(pid) is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            say(f"ended the IAP tunnel to {rec.get('instance')} (pid {pid}) a stopped run left")
        path.unlink(missing_ok=True)


def _wait_for_port(
    proc: subprocess.Popen[str],
    lines: queue.Queue[str | None],
    last: list[str],
    wait_s: float,
    instance: str,
) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        left = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(left, 0.01)) if left > 0 else None
        except queue.Empty:
            line = None
            left = 0
        if line is not None:
            found = LISTENING_RE.search(line)
            if found:
                return int(found.group(1))
            continue
        said = " | ".join(x for x in last[-5:] if x.strip()) or "no output"
        if left <= 0:
            why = f"did not report a local port within {wait_s:.0f} s ({said})"
        else:
            try:
                proc.wait(timeout=STOP_WAIT_S)
                why = f"exited {proc.returncode} ({said})"
            except subprocess.TimeoutExpired:
                why = f"closed its output without reporting a local port ({said})"
        raise PhaseFailed(
            "ssh",
            f"gcloud compute start-iap-tunnel to {instance} {why}; check gcloud's credentials "
            "(the auth step's credentials file), roles/iap.tunnelResourceAccessor and the "
            "standing rule for 35.235.240.0/20",
        )


__all__ = ["LISTENING_RE", "Tunnel", "iap_tunnel", "sweep_left_tunnels", "tunnels_dir"]
