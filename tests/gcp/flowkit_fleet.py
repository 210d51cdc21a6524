"""The stand-ins of tests/gcp/flowkit.py around a fleet: several sandbox hosts, each playing one
instance of the loopback Compute fake (the fake's primary instance first, then instances added
with `add_instance`), with its own guest agent, firewall mirror and published host keys.

One "what is my IP" service answers the first host's link address; the mirrors of the others
model the runner's NAT (`FirewallMirror(seen_as=...)`): a rule for that one address lets this
machine reach every host, as one runner address reaches every VM of a VPC.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ai_deploy.host.paths import LOCK_DIR
from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp
from tests.gcp.flowkit import (
    DeployProcess,
    FirewallMirror,
    GuestAgent,
    MyIpServer,
    deploy_environment,
    guest_output,
    in_guest,
    ssh_port_state,
    wait_until,
)

FLEET_LABEL = "role=ai-server"
TARGET_TAG = "ai-server"
DEPLOY_USER = "ai-deploy"  # the run's key's login (AI_DEPLOY_SSH_USER's default)
APP_ROOT = "/app/ai-server"  # group_data's app_root
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def host_keys_of(host: Host) -> dict[str, str]:
    """The host's SSH host keys as its sshd has them (algorithm -> blob)."""
    found = guest_output(host, "cat /etc/ssh/ssh_host_*_key.pub").splitlines()
    return dict(line.split()[:2] for line in found if line.strip())


def renew_host_keys(host: Host) -> None:
    """New host keys for HOST: every sandbox clone starts with the base image's, while each VM
    of a fleet has its own (so a key pinned for the wrong instance shows)."""
    proc = in_guest(
        host,
        "set -e; rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; ssh-keygen -A; "
        "systemctl try-restart ssh.service sshd.service 2>/dev/null || true",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"new host keys on {host.name}: {proc.stderr.strip()}")


@dataclass
class Member:
    """One instance of the fleet and the sandbox host playing it."""

    instance: str
    zone: str
    host: Host
    agent: GuestAgent
    mirror: FirewallMirror

    def release_served(self) -> str:
        reply = requests.get(f"http://{self.host.address}:8000/health", timeout=5)
        assert reply.status_code == 200, f"{self.instance}: {reply.status_code} {reply.text}"
        return str(reply.json()["release"])

    def lock_held(self) -> bool:
        lock = shlex.quote(f"{APP_ROOT}/{LOCK_DIR}")
        return guest_output(self.host, f"test -e {lock} && echo held || echo free").strip() == (
            "held"
        )

    def main_pid(self) -> str:
        return guest_output(self.host, "systemctl show -p MainPID --value ai-server").strip()


@dataclass
class FleetFlow:
    """The fake, the fleet's members and the runner's address service."""

    fake: FakeGcp
    members: list[Member]
    myip: MyIpServer
    env_file: Path
    processes: list[DeployProcess] = field(default_factory=list)

    @property
    def runner_range(self) -> str:
        return f"{self.myip.address}/32"

    def member(self, instance: str) -> Member:
        return next(m for m in self.members if m.instance == instance)

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What CI gives `ai-deploy deploy` for a fleet: the label, no single instance."""
        env = deploy_environment(
            os.environ,
            self.fake,
            {**self.myip.env(), "AI_DEPLOY_INSTANCES_LABEL": FLEET_LABEL, **(extra or {})},
        )
        for name in ("GCP_INSTANCE", "GCP_ZONE"):
            env.pop(name, None)
        return env

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> DeployProcess:
        process = DeployProcess(list(args), self.environment(env))
        self.processes.append(process)
        return process

    def deploy(
        self, artifact: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600
    ) -> tuple[int, str]:
        """`ai-deploy deploy --artifact ARTIFACT ARGS` to its end: (exit code, output)."""
        argv = ["--artifact", str(artifact), "--health-interval", "1", *args]
        argv += ["--data", f"env_file={self.env_file}"]
        process = self.start(*argv, env=env)
        code = process.finish(timeout=timeout)
        output = _ANSI.sub("", process.output)
        print(f"$ ai-deploy deploy {' '.join(argv)}\n{output}\n(exit {code})")
        return code, output

    def rules_created(self) -> list[dict]:
        return [r.json() for r in self.fake.requests_to("POST", r"/global/firewalls$")]

    def metadata_writes(self, instance: str) -> list[str]:
        """The paths of setMetadata calls on INSTANCE."""
        pattern = rf"/instances/{re.escape(instance)}/setMetadata$"
        return [r.path for r in self.fake.requests_to("POST", pattern)]

    def assert_nothing_left(self, output: str, lock_wait_s: float = 15.0) -> None:
        """No rule, no ssh-keys entry on any instance, no OS Login key; every host refuses SSH,
        has no key for the run's user and no deploy lock (dropped within LOCK_WAIT_S)."""
        with self.fake.lock:
            rules = sorted(self.fake.state.firewalls)
            entries = {
                i.name: i.metadata["ssh-keys"]
                for i in self.fake.state.all_instances()
                if "ssh-keys" in i.metadata
            }
            oslogin = {u: k for u, k in self.fake.state.oslogin_keys.items() if k}
        assert rules == [], f"firewall rules left: {rules}\n{output}"
        assert entries == {}, f"ssh-keys left: {entries}\n{output}"
        assert oslogin == {}, f"OS Login keys left: {oslogin}\n{output}"
        for m in self.members:
            assert m.mirror.allowed_now() == [], m.instance
            assert ssh_port_state(m.host.address) == "refused", m.instance
            m.agent.wait_synced()
            assert m.agent.authorized_keys(DEPLOY_USER) == [], m.instance
            assert m.mirror.errors == [] and m.agent.errors == [], m.instance
        for m in self.members:
            assert wait_until(lambda m=m: not m.lock_held(), timeout=lock_wait_s), (
                f"a deploy lock is left on {m.instance}\n{output}"
            )


@contextmanager
def fleet_flow(
    fake: FakeGcp, places: list[tuple[str, str, Host]], env_file: Path
) -> Iterator[FleetFlow]:
    """PLACES (instance name, zone, host) as RUNNING instances labelled FLEET_LABEL and tagged
    TARGET_TAG, each publishing its host's keys, with a guest agent and a firewall mirror; the
    first is the fake's primary instance, the runner's address is the first host's link."""
    key, value = FLEET_LABEL.split("=")
    (first_name, first_zone, first_host), *rest = places
    with fake.lock:
        primary = fake.state.instance
        primary.name, primary.zone, primary.nat_ip = first_name, first_zone, first_host.address
        primary.labels, primary.tags = {key: value}, [TARGET_TAG]
    for name, zone, host in rest:
        fake.add_instance(name, zone, labels={key: value}, tags=[TARGET_TAG], nat_ip=host.address)
    for name, _, host in places:
        fake.publish_host_keys(host_keys_of(host), instance=name)
    myip = MyIpServer(first_host.index)
    flow = FleetFlow(fake, [], myip, env_file)
    started: list[GuestAgent] = []
    try:
        for i, (name, zone, host) in enumerate(places):
            seen_as = None if i == 0 else myip.address
            mirror = FirewallMirror(fake, host, instance=name, seen_as=seen_as)
            agent = GuestAgent(fake, host, instance=name)
            flow.members.append(Member(name, zone, host, agent, mirror))
            mirror.install()
            started.append(agent)
            agent.start()
        yield flow
    finally:
        for process in flow.processes:
            process.kill()
        for agent in started:
            agent.stop()
        for m in flow.members:
            m.mirror.close()
        myip.stop()


def table_rows(output: str) -> dict[str, dict[str, str]]:
    """The per-host table that ends a rollout's output: host -> step, before, after, outcome."""
    lines = output.splitlines()
    heads = [i for i, line in enumerate(lines) if line.split()[:2] == ["host", "step"]]
    assert heads, f"no per-host table:\n{output}"
    row = re.compile(r"^(\S+)\s+(canary|batch \d+)\s+(\S+)\s+(\S+)\s+(.+?)\s+[\d.]+s$")
    rows: dict[str, dict[str, str]] = {}
    for line in lines[heads[-1] + 1 :]:
        match = row.match(line.strip())
        if not match:
            break
        host, step, before, after, outcome = match.groups()
        rows[host] = {"step": step, "before": before, "after": after, "outcome": outcome}
    return rows
