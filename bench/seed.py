"""The seed's deploy procedure (shared/seeds/ AI Server CD guide), as faithfully as a sandbox
host allows: upload the tar.gz to /tmp, then the deploy step's bash over ssh as `ubuntu` (stop,
extract over the old tree, chown, `uv sync --frozen` only when uv.lock's md5 changed, start),
then the health check step from outside: `curl -s -f http://HOST:8000/health`, 12 tries 5 s
apart. Its unit file is the guide's. Nothing happens when the check fails; a rollback is the
same procedure with an older artifact (the guide's "re-run an old job").

Differences from the seed, all outside the measured outage (see `DIFFERENCES`):
- the script's "install uv if missing" branch cannot run the curl installer here; the pinned uv
  binary is put at ~/.local/bin/uv once during host set-up and the branch only prints its line;
- gcloud's scp/ssh and the GitHub Actions steps are plain scp/ssh from this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import CmdResult, run_streamed
from testkit.load import http_get
from testkit.remote import put, scp_argv, ssh, ssh_argv, sudo, write_file

REMOTE_ARTIFACT = "/tmp/ai-server-deploy.tar.gz"
APP_ROOT = "/app/ai-server"
HEALTH_ATTEMPTS = 12  # the seed's `for i in {1..12}`
HEALTH_INTERVAL_S = 5.0  # the seed's `sleep 5`
# curl has no overall timeout by default; a bound here keeps a hung probe from hanging the run.
HEALTH_PROBE_TIMEOUT_S = 60.0

DIFFERENCES = (
    "uv: the seed's `command -v uv` check runs before ~/.local/bin is on PATH, so every seed "
    "deploy re-runs the curl installer; that installer cannot run here, so the pinned uv is put "
    "at ~/.local/bin/uv during host set-up and the branch only prints 'Installing uv...' "
    "(the seed's wall time here lacks the uv download; it happens before the stop, so the "
    "outage is unaffected)",
    "transport: plain scp/ssh from this machine instead of gcloud compute scp/ssh, and no "
    "GitHub Actions step overhead between the deploy step and the health check step",
    f"health probe: curl -s -f has no overall timeout; here each probe is bounded at "
    f"{HEALTH_PROBE_TIMEOUT_S:.0f} s",
)

# The guide's unit file, as written there (systemd 서비스 설정).
UNIT = """[Unit]
Description=Dojangkok AI Server (FastAPI)
After=network.target

[Service]
User=ubuntu
Group=ubuntu
WorkingDirectory=/app/ai-server
ExecStart=/app/ai-server/.venv/bin/uvicorn main:app --host 0.0.0.0 --port 8000
Restart=on-failure
RestartSec=5

# Environment file
EnvironmentFile=/app/ai-server/.env

# Logs
StandardOutput=append:/var/log/dojangkok/ai-server.log
StandardError=append:/var/log/dojangkok/ai-server-error.log

[Install]
WantedBy=multi-user.target
"""

# The deploy step's `--command` (comments translated); only the uv installer line differs.
DEPLOY_SCRIPT = """
set -e

# Install uv (when missing)
if ! command -v uv &> /dev/null; then
  echo "Installing uv..."
  : # bench: the curl installer cannot run here; the pinned uv is at ~/.local/bin/uv (set-up)
fi
export PATH="$HOME/.local/bin:$PATH"

# Stop the service
sudo systemctl stop ai-server || true

# Deploy
sudo mkdir -p /app/ai-server
sudo tar -xzf /tmp/ai-server-deploy.tar.gz -C /app/ai-server

# Ownership (before uv sync)
sudo chown -R $(whoami):$(whoami) /app/ai-server

# uv sync (only when uv.lock changed)
cd /app/ai-server
NEW_HASH=$(md5sum uv.lock | cut -d" " -f1)
OLD_HASH=""
if [ -f ".venv/.uv_lock_hash" ]; then
  OLD_HASH=$(cat .venv/.uv_lock_hash)
fi

if [ "$NEW_HASH" != "$OLD_HASH" ] || [ ! -d ".venv" ]; then
  echo "uv.lock changed or .venv missing, installing..."
  rm -rf .venv
  $HOME/.local/bin/uv sync --frozen
  echo "$NEW_HASH" > .venv/.uv_lock_hash
  echo "Dependencies installed"
else
  echo "uv.lock unchanged, skipping dependency install"
fi

# Start the service
sudo systemctl start ai-server

# Clean up
rm -f /tmp/ai-server-deploy.tar.gz
"""


def write_script(path: Path) -> Path:
    """Write the deploy step's script to PATH (for reading; it runs as ssh's command)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "#!/bin/bash\n# The seed's deploy step, run as `ubuntu` over ssh (bench/seed.py).\n"
    path.write_text(head + DEPLOY_SCRIPT)
    return path


def setup_host(address: str, uv_binary: Path, model_load_s: float) -> None:
    """Make a fresh host look like the seed's VM before its first deploy: the guide's unit
    (enabled), its log directory, the .env the guide keeps on the server, and uv at
    ~/.local/bin/uv (where the seed's installer puts it)."""
    put(address, uv_binary, "/tmp/uv-pinned")
    ssh(
        address,
        "mkdir -p ~/.local/bin && install -m 0755 /tmp/uv-pinned ~/.local/bin/uv "
        "&& rm -f /tmp/uv-pinned",
    )
    sudo(address, f"mkdir -p /var/log/dojangkok {APP_ROOT}")
    write_file(address, "/etc/systemd/system/ai-server.service", UNIT)
    write_file(
        address,
        f"{APP_ROOT}/.env",
        f"MODEL_LOAD_SECONDS={model_load_s:g}\n",
        mode="600",
        owner="ubuntu",
    )
    sudo(address, "systemctl daemon-reload && systemctl enable ai-server 2>&1")


@dataclass
class Probe:
    at: float  # time.monotonic
    code: int
    status: str


@dataclass
class SeedRun:
    """One run of the seed's job: upload, deploy step, health check step."""

    started: float
    ended: float = 0.0
    upload: CmdResult | None = None
    script: CmdResult | None = None
    probes: list[Probe] = field(default_factory=list)
    healthy: bool = False
    failed_step: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_step is None and self.healthy

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    def lines(self) -> list[tuple[float, str]]:
        """Every line of the job, time-stamped: its commands' output, each health probe and
        the job's end."""
        out = [line for cmd in (self.upload, self.script) if cmd for line in cmd.lines]
        for i, p in enumerate(self.probes, 1):
            out.append((p.at, f"health attempt {i}: {p.status}\n"))
        colour = "green" if self.ok else "red"
        out.append((self.ended, f"job {colour} ({self.failed_step or 'ok'})\n"))
        return out

    def log(self) -> str:
        parts = []
        for label, cmd in (("upload", self.upload), ("deploy step", self.script)):
            if cmd is not None:
                parts.append(f"--- {label}: rc={cmd.rc} in {cmd.wall_s:.2f} s\n{cmd.output}")
        for i, p in enumerate(self.probes, 1):
            parts.append(f"health attempt {i}: {p.status} (t+{p.at - self.started:.2f} s)\n")
        parts.append(f"job: {'green' if self.ok else 'red'} ({self.failed_step or 'ok'})\n")
        return "".join(parts)


def health_poll(
    address: str,
    *,
    attempts: int = HEALTH_ATTEMPTS,
    interval_s: float = HEALTH_INTERVAL_S,
    probe_timeout_s: float = HEALTH_PROBE_TIMEOUT_S,
    echo: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, list[Probe]]:
    """The seed's health check step: `curl -s -f` (an answer below 400 passes) up to ATTEMPTS
    times, sleeping INTERVAL_S after each failed try, the last one included."""
    probes: list[Probe] = []
    for i in range(1, attempts + 1):
        answer = http_get(address, 8000, "/health", probe_timeout_s)
        probes.append(Probe(time.monotonic(), answer.code, answer.status))
        if 0 < answer.code < 400:
            if echo:
                echo("Health check passed")
            return True, probes
        if echo:
            echo(f"Attempt {i}/{attempts} - Waiting... ({answer.status})")
        sleep(interval_s)
    if echo:
        echo("Health check failed")
    return False, probes


def run_job(
    address: str,
    artifact: Path,
    *,
    attempts: int = HEALTH_ATTEMPTS,
    interval_s: float = HEALTH_INTERVAL_S,
    poll: bool = True,
    echo: Callable[[str], None] | None = None,
) -> SeedRun:
    """The seed's job for ARTIFACT: upload, deploy step, then (when POLL) its health check.
    A failed step ends the job, as a failed GitHub Actions step does."""
    run = SeedRun(started=time.monotonic())
    try:
        run.upload = run_streamed(
            scp_argv(address, artifact, REMOTE_ARTIFACT), timeout=300, echo=echo
        )
        if run.upload.rc != 0:
            run.failed_step = "upload"
            return run
        run.script = run_streamed(ssh_argv(address, DEPLOY_SCRIPT), timeout=900, echo=echo)
        if run.script.rc != 0:
            run.failed_step = "deploy step"
            return run
        if poll:
            run.healthy, run.probes = health_poll(
                address, attempts=attempts, interval_s=interval_s, echo=echo
            )
            if not run.healthy:
                run.failed_step = "health check"
        else:
            run.healthy = True
        return run
    finally:
        run.ended = time.monotonic()
