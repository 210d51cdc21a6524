"""A fleet of `k22-` instances in the loopback Compute fake with no sandbox host behind them, for
`ai-deploy deploy` runs that are stopped around their key phases.

Each instance's address is a loopback address where nothing listens on :22, so the deploy gets
as far as waiting for SSH (and waits there); the runner's address service answers 127.0.0.1.
What is asserted is the fake's state: rules, ssh-keys lines, and the operations in flight.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ai_deploy.sandbox import network
from tests.fakes.gcp import FakeGcp
from tests.gcp.flowkit import DeployProcess, MyIpServer, deploy_environment

LABEL = "role=k22-fleet"
ZONE = "asia-northeast3-a"
SET_METADATA = r"/setMetadata$"
# Compute's setMetadata commonly takes several seconds; the acceptance runs use 8.
METADATA_SECONDS = 8.0


def instance_names(count: int) -> list[str]:
    return [f"k22-{i:02d}" for i in range(1, count + 1)]


@dataclass
class KeyFleet:
    """COUNT labelled, tagged, RUNNING instances and the runner's address service."""

    fake: FakeGcp
    names: list[str]
    artifact: Path
    env_file: Path
    myip: MyIpServer
    processes: list[DeployProcess] = field(default_factory=list)

    def start(self, run_id: str, extra: Mapping[str, str] | None = None) -> DeployProcess:
        """`ai-deploy deploy` of the artifact as GitHub run RUN_ID (attempt 1), in progress."""
        with self.fake.lock:
            self.fake.state.github_runs[run_id] = "in_progress"
        env = deploy_environment(
            os.environ,
            self.fake,
            {
                **self.myip.env(),
                **self.fake.github_api_env(),
                "AI_DEPLOY_INSTANCES_LABEL": LABEL,
                "GITHUB_RUN_ID": run_id,
                "GITHUB_RUN_ATTEMPT": "1",
                **(extra or {}),
            },
        )
        for name in ("GCP_INSTANCE", "GCP_ZONE"):
            env.pop(name, None)
        args = ["--artifact", str(self.artifact), "--data", f"env_file={self.env_file}"]
        process = DeployProcess(args, env)
        self.processes.append(process)
        return process

    def finish(self, process: DeployProcess, run_id: str, timeout: float = 300) -> int:
        code = process.finish(timeout=timeout)
        with self.fake.lock:
            self.fake.state.github_runs[run_id] = "completed"
        print(f"--- run {run_id} (exit {code})\n{process.output}")
        return code

    def metadata_requests(self) -> int:
        return len(self.fake.requests_to("POST", SET_METADATA))

    def wait_for_requests(self, count: int, timeout: float = 120) -> None:
        assert wait_for(lambda: self.metadata_requests() >= count, timeout), (
            f"only {self.metadata_requests()} setMetadata requests, wanted {count}"
        )

    def keyed(self) -> list[str]:
        """Instances whose ssh-keys metadata has a line now."""
        with self.fake.lock:
            return [
                i.name
                for i in self.fake.state.all_instances()
                if i.metadata.get("ssh-keys", "").strip()
            ]

    def settle(self, timeout: float = 60) -> None:
        """Until no operation is in flight (a late write would have landed)."""

        def settled() -> bool:
            with self.fake.lock:
                self.fake._advance_operations()
                ops = self.fake.state.operations.values()
                return all(op.body["status"] == "DONE" for op in ops)

        assert wait_for(settled, timeout), "operations still in flight"

    def left(self) -> tuple[list[str], dict[str, str]]:
        """(firewall rules, instance -> ssh-keys value) after every operation ended."""
        self.settle()
        with self.fake.lock:
            rules = sorted(self.fake.state.firewalls)
            keys = {
                i.name: i.metadata["ssh-keys"]
                for i in self.fake.state.all_instances()
                if i.metadata.get("ssh-keys", "").strip()
            }
        return rules, keys


def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def github_cancel(process: DeployProcess) -> int | None:
    """What GitHub does to a cancelled job's step: SIGINT, SIGTERM 3 s later, SIGKILL 10 s after
    the first. Returns the exit code, or None when it had to be killed."""
    began = time.monotonic()
    process.proc.send_signal(signal.SIGINT)
    for at, sig in ((3.0, signal.SIGTERM), (10.0, signal.SIGKILL)):
        try:
            return process.proc.wait(timeout=max(0.0, began + at - time.monotonic()))
        except Exception:  # still running: the next signal
            process.proc.send_signal(sig)
    process.proc.wait(timeout=30)
    return None


@contextmanager
def key_fleet(
    fake: FakeGcp, count: int, artifact: Path, env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeyFleet]:
    """COUNT instances `k22-01`... labelled LABEL, tagged ai-server, at 127.0.0.(10+i), with no
    published host keys; the runner is 127.0.0.1 (its address service listens there)."""
    key, value = LABEL.split("=")
    names = instance_names(count)
    for i, name in enumerate(names, start=1):
        fake.add_instance(
            name, ZONE, labels={key: value}, tags=["ai-server"], nat_ip=f"127.0.0.{10 + i}"
        )
    monkeypatch.setattr(network, "gateway_address", lambda index: "127.0.0.1")
    myip = MyIpServer(0)
    kit = KeyFleet(fake, names, artifact, env_file, myip)
    try:
        yield kit
    finally:
        for process in kit.processes:
            process.kill()
        myip.stop()


def entries_of(value: str) -> list[str]:
    return [line for line in value.splitlines() if line.strip()]


def run_of(line: str) -> str | None:
    match = re.search(r'"aiDeployRun":"([^"]+)"', line)
    return match.group(1) if match else None
