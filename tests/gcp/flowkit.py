"""Test-side stand-ins for what surrounds `ai-deploy deploy` on a real GCP run.

With the loopback Compute fake (tests/fakes/gcp/) and a sandbox host playing the VM:

- `MyIpServer`: the "what is my IP" service, listening on the sandbox link's machine-side
  address, which is exactly the source address the guest sees for this machine's connections;
- `GuestAgent`: the GCE guest agent: mirrors the instance metadata `ssh-keys` onto the host
  (creates the user with sudo rights, writes ~USER/.ssh/authorized_keys, removes keys whose
  entry went away or whose expireOn passed), through `nsenter` into the container, never SSH;
- `FirewallMirror`: the VPC firewall: an nftables table of its own on this machine's output
  path to the guest lets tcp:22 through only from the source ranges of fake rules that allow
  tcp:22 to a tag the instance carries; everything else to :22 is answered with a TCP reset;
- `WebhookReceiver`: Slack and Discord incoming webhooks that record payloads and can answer
  500 or hang (bounded);
- `DeployProcess`: `python -m ai_deploy.cli deploy ...` as a child process with its output
  collected line by line.

The guest side lives in flowkit_guest, the firewall in flowkit_firewall, the HTTP servers in
flowkit_servers; tests import all of them from here.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.gcp import FakeGcp
from tests.gcp.flowkit_firewall import FirewallMirror, ssh_source_ranges
from tests.gcp.flowkit_guest import (
    PROTECTED_USERS,
    GuestAgent,
    agent_script,
    container_pid,
    guest_output,
    in_guest,
    ssh_port_state,
    wanted_keys,
)
from tests.gcp.flowkit_servers import MyIpServer, WebhookReceiver, discord_facts, slack_facts

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- the deploy process --------------------------------------------------------------------


@dataclass
class DeployProcess:
    """`python -m ai_deploy.cli COMMAND ARGS` (COMMAND: deploy unless given) started with ENV;
    output collected in `lines`."""

    args: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    command: tuple[str, ...] = ("deploy",)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._done = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ai_deploy.cli", *self.command, *self.args],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120.0, start: int = 0) -> str:
        """The first output line matching the regex PATTERN (from line START on); raises
        TimeoutError otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise TimeoutError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def children(self) -> list[int]:
        """PIDs of the deploy process's direct children (pyinfra, ssh)."""
        found: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        return found

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = 300.0) -> int:
        """Wait for the exit code (and the rest of the output)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def deploy_environment(
    base: Mapping[str, str], fake: FakeGcp, extra: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: BASE (credentials as the auth action leaves them, the fake's
    endpoints) plus the seed's GCP_* secrets for the fake's instance, a CI run id, EXTRA;
    no GitHub Actions output mode and no proxies."""
    env = {
        k: v
        for k, v in base.items()
        if k not in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY") and not k.lower().endswith("_proxy")
    }
    env.update(
        {
            "GCP_PROJECT_ID": fake.state.project,
            "GCP_ZONE": fake.state.instance.zone,
            "GCP_INSTANCE": fake.state.instance.name,
            "GITHUB_RUN_ID": "4242",
            "GITHUB_RUN_ATTEMPT": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def mutating_compute_requests(fake: FakeGcp) -> list[str]:
    """`METHOD PATH` of every recorded Compute request that could change something (the
    operations' wait calls are POSTs that change nothing, and are left out)."""
    with fake.lock:
        return [
            f"{r.method} {r.path}"
            for r in fake.requests
            if r.path.startswith("/compute/")
            and r.method in ("POST", "PUT", "PATCH", "DELETE")
            and not re.search(r"/operations/[^/]+/wait$", r.path)
        ]


@dataclass
class PortProbe:
    """SSH reachability seen at named moments (from hooks in the fake or the test)."""

    address: str
    seen: list[tuple[str, str]] = field(default_factory=list)

    def check(self, moment: str) -> str:
        state = ssh_port_state(self.address)
        self.seen.append((moment, state))
        return state

    def states(self, moment: str) -> list[str]:
        return [state for m, state in self.seen if m == moment]


def iter_ssh_keys_writes(fake: FakeGcp) -> Iterator[str | None]:
    """The `ssh-keys` value of each recorded setMetadata body, in order."""
    for request in fake.requests_to("POST", r"/setMetadata$"):
        items = {i["key"]: i.get("value") for i in (request.json() or {}).get("items", [])}
        yield items.get("ssh-keys")


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


__all__ = [
    "PROTECTED_USERS",
    "REPO_ROOT",
    "DeployProcess",
    "FirewallMirror",
    "GuestAgent",
    "MyIpServer",
    "PortProbe",
    "WebhookReceiver",
    "agent_script",
    "container_pid",
    "deploy_environment",
    "discord_facts",
    "guest_output",
    "in_guest",
    "iter_ssh_keys_writes",
    "mutating_compute_requests",
    "process_alive",
    "slack_facts",
    "ssh_port_state",
    "ssh_source_ranges",
    "wait_until",
    "wanted_keys",
]
