"""The fleet's acceptance, end to end: 3 sandbox hosts behind HAProxy (testkit.lb, health checks
timed like a GCP backend service's, scaled down), `deploy_strategy=restart` (one copy of the
model, as when the GPU is short), the stand-in engine with a short start, 20 POSTs/s of
/v1/completions through HAProxy with a 10 s client timeout and token streams opened during
the rollout, one host at a time.

- lb_drain=true: 0 failed requests, 0 streams cut, at least 2 hosts in service at every sample,
  every host on the new release; a second run changes nothing, restarts nothing and drains
  nothing;
- a release that fails on the 2nd host: every host back on the previous release, drained and
  restored one at a time (2 in service at every sample), 0 failed requests;
- lb_drain=false, checks on the app's /health: the rollout's failed requests (the baseline);
- `ai-deploy sandbox lb`: the same load balancer, as a user starts it in front of the hosts.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ai_deploy.sandbox import hosts
from bench.ours import setup_host
from testkit.lb import Backend, HealthCheck, haproxy
from testkit.lbrollout import RolloutRun, Streams, rollout_under_traffic
from tests.e2e.conftest import Sandbox, require_root
from tests.e2e.deploykit import REPO, Artifact, build_variant, main_pid, serving_release
from tests.e2e.test_rollout import REFUSE_FILE, _refuse_where_flagged, table_rows

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"
MODEL_LOAD_S = 5.0  # the stand-in engine's start (20 s in the numbers)
CHECK_EVERY_S, THRESHOLD = 0.5, 2  # GCP's 5 s x 2, scaled down
LB_DRAIN_WAIT_S = 3  # the checks' 1 s to see a host go or come back, plus a margin
RATE, CLIENT_TIMEOUT_S = 20.0, 10.0
# 4 streams of 15 s (60 s in the numbers): 2 as the rollout starts, 2 in its middle
STREAMS = (Streams(1.0, 2, 30, 0.5), Streams(20.0, 2, 30, 0.5))
DRAIN = ("deploy_strategy=restart", "lb_drain=true", f"lb_drain_wait_s={LB_DRAIN_WAIT_S}",
         "drain_timeout_s=60")  # fmt: skip
NO_DRAIN = ("deploy_strategy=restart", "drain_timeout_s=60")  # lb_drain: false by default


@dataclass
class Fleet:
    hosts: list[Sandbox]
    inventory: Path
    work: Path
    base: Artifact
    new: Artifact
    refusing: Artifact  # fails to start where REFUSE_FILE exists

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def releases(self) -> dict[str, str]:
        return {h.name: serving_release(h.address) for h in self.hosts}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_root()
    work = tmp_path_factory.mktemp("h25-fleet")
    base = build_variant(work, "h25-base")
    new = build_variant(work, "h25-new")
    refusing = build_variant(work, "h25-refusing", patch_main=_refuse_where_flagged)
    started, inventory = hosts.up(count=3, name=f"h25-fleet-{os.getpid() % 100_000}")
    try:
        sandboxes = sorted((Sandbox(h, inventory) for h in started), key=lambda s: s.name)
        for h in sandboxes:
            setup_host(h.address, MODEL_LOAD_S)
        yield Fleet(sandboxes, inventory, work, base, new, refusing)
    finally:
        hosts.down([h.name for h in started])


def deploy_argv(fleet: Fleet, artifact: Artifact, settings: tuple[str, ...]) -> list[str]:
    """One host at a time (no canary), the outside check on each host's /health."""
    data = [arg for item in settings for arg in ("--data", item)]
    return [
        str(AI_DEPLOY), "deploy", "--artifact", str(artifact.path), "-i", str(fleet.inventory),
        "--no-gcp", "--health-interval", "1", "--health-attempts", "30", "--canary", "0",
        "--batch-size", "1", *data,
    ]  # fmt: skip


def put(fleet: Fleet, artifact: Artifact, settings: tuple[str, ...]) -> None:
    """Unmeasured: ARTIFACT on every host with SETTINGS, with no load balancer."""
    argv = deploy_argv(fleet, artifact, settings)
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, f"put {artifact.path.name}: {done.stdout[-4000:]}{done.stderr}"
    assert fleet.releases() == dict.fromkeys(fleet.names, artifact.release_id)


def measured(
    fleet: Fleet, artifact: Artifact, settings: tuple[str, ...], health_path: str, label: str
) -> RolloutRun:
    check = HealthCheck(health_path, 8000, CHECK_EVERY_S, THRESHOLD)
    backends = [Backend(h.name, h.address) for h in fleet.hosts]
    with haproxy(backends, check) as lb:
        lb.wait_for(fleet.names, timeout=30)
        run = rollout_under_traffic(
            lb, deploy_argv(fleet, artifact, settings), fleet.work / f"{label}.log",
            rate=RATE, timeout=CLIENT_TIMEOUT_S, streams=STREAMS, cwd=REPO,
        )  # fmt: skip
    print(f"{label}: exit {run.rc} in {run.wall_s:.1f} s; {run.traffic.describe()}")
    return run


def explain(run: RolloutRun) -> str:
    failed = [(round(r.scheduled, 1), r.status, r.error[:60]) for r in run.traffic.failed]
    cut = [(round(s.started, 1), s.tokens, s.error[:60]) for s in run.traffic.cut]
    return f"failed {failed[:20]}\ncut {cut}\n{run.output[-5000:]}"


def test_1_a_drained_rollout_fails_no_request_and_cuts_no_stream(fleet: Fleet) -> None:
    put(fleet, fleet.base, DRAIN)
    run = measured(fleet, fleet.new, DRAIN, "/lb-health", "h25-drain")
    assert run.rc == 0, explain(run)
    assert run.traffic.failed == [], explain(run)
    assert len(run.traffic.streams) == 4 and run.traffic.cut == [], explain(run)
    assert run.traffic.fewest_up() >= 2, run.traffic.samples
    assert min(len(s.up) for s in run.traffic.samples) == 2  # each host was taken out
    assert fleet.releases() == dict.fromkeys(fleet.names, fleet.new.release_id)
    served = {s.releases.pop() for s in run.traffic.streams if len(s.releases) == 1}
    assert served <= {fleet.base.release_id, fleet.new.release_id}

    pids = {h.name: main_pid(h) for h in fleet.hosts}
    again = measured(fleet, fleet.new, DRAIN, "/lb-health", "h25-drain-again")
    assert again.rc == 0, explain(again)
    rows = table_rows(again.output)
    assert {n: rows[n]["outcome"] for n in fleet.names} == dict.fromkeys(fleet.names, "unchanged")
    assert {h.name: main_pid(h) for h in fleet.hosts} == pids  # nothing restarted
    assert again.traffic.fewest_up() == 3  # nothing drained
    assert again.traffic.failed == [] and again.traffic.cut == []


def test_2_a_release_failing_on_the_second_host_puts_every_host_back_drained(
    fleet: Fleet,
) -> None:
    put(fleet, fleet.new, DRAIN)
    second = fleet.hosts[1]
    second.sudo(f"touch {REFUSE_FILE}")
    try:
        run = measured(fleet, fleet.refusing, DRAIN, "/lb-health", "h25-refusing")
    finally:
        second.sudo(f"rm -f {REFUSE_FILE}")
    assert run.rc == 15, explain(run)
    assert fleet.releases() == dict.fromkeys(fleet.names, fleet.new.release_id)
    rows = table_rows(run.output)
    assert {n: rows[n]["after"] for n in fleet.names} == dict.fromkeys(
        fleet.names, fleet.new.release_id
    )
    assert run.traffic.failed == [], explain(run)
    assert run.traffic.cut == [], explain(run)
    assert run.traffic.fewest_up() >= 2, run.traffic.samples  # one at a time, back included


def test_3_without_drain_the_same_rollout_fails_requests(fleet: Fleet) -> None:
    """The baseline: checks on the app's /health, nothing tells the load balancer a host is
    about to stop, so the requests it sends there between the stop and its second failed
    check fail (no retry on another host)."""
    put(fleet, fleet.base, NO_DRAIN)
    run = measured(fleet, fleet.new, NO_DRAIN, "/health", "h25-no-drain")
    assert run.rc == 0, explain(run)
    assert fleet.releases() == dict.fromkeys(fleet.names, fleet.new.release_id)
    print(f"lb_drain=false: {len(run.traffic.failed)} failed request(s), "
          f"{len(run.traffic.cut)} stream(s) cut")  # fmt: skip
    assert len(run.traffic.failed) > 0, explain(run)


def _sandbox_lb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AI_DEPLOY), "sandbox", "lb", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def _in_service(status: str) -> list[str]:
    return [line.split()[0] for line in status.splitlines() if " in service " in line]


def _until(what: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_4_a_user_puts_the_sandbox_hosts_behind_a_load_balancer(fleet: Fleet) -> None:
    """`ai-deploy sandbox lb NAMES`: HAProxy in front of the hosts, as a user starts it; its
    --status says which hosts it sends traffic to (a drained host goes out, then back); requests
    through its URL reach the app; --down ends it and its port."""
    put(fleet, fleet.base, DRAIN)
    assert _sandbox_lb("nope").returncode == 2
    started = _sandbox_lb(*fleet.names, "--interval", str(CHECK_EVERY_S))
    try:
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip()
        assert url.startswith("http://127.0.0.1:"), started.stdout
        assert "GET /lb-health on port 8000 every 0.5 s, 2 in a row" in started.stderr

        def serving(names: list[str]) -> bool:
            return sorted(_in_service(_sandbox_lb("--status").stdout)) == sorted(names)

        assert serving(fleet.names) or _until(lambda: serving(fleet.names)), _sandbox_lb(
            "--status"
        ).stdout
        for _ in range(6):
            reply = requests.get(f"{url}/health", timeout=5)
            assert reply.status_code == 200 and reply.json()["release"] == fleet.base.release_id
        first, flag = fleet.hosts[0], "/run/ai-server.lb-drained"
        first.sudo(f"touch {flag}")
        try:
            assert _until(lambda: serving(fleet.names[1:])), _sandbox_lb("--status").stdout
        finally:
            first.sudo(f"rm -f {flag}")
        assert _until(lambda: serving(fleet.names)), _sandbox_lb("--status").stdout
    finally:
        stopped = _sandbox_lb("--down")
    assert stopped.returncode == 0 and "stopped the sandbox load balancer" in stopped.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)
    assert _sandbox_lb("--status").returncode == 1
