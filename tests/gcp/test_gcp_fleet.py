"""`ai-deploy deploy` over a fleet found by label, end to end: the real google-auth and
google-cloud-compute libraries against the loopback Compute fake, whose instances
`ai-server-prod` (asia-northeast3-a) and `ai-server-prod-2` (us-central1-a) are two sandbox
hosts, both labelled role=ai-server and tagged ai-server; `ai-server-prod-3` carries the same
label and tag but is TERMINATED, so it is listed and left out.

Each host publishes its own host keys (the second gets fresh ones: sandbox clones share the
image's), has its own guest agent (its instance's ssh-keys metadata -> users and keys) and
firewall mirror (a rule for the runner's one address lets this machine reach it). The deploy
runs as a child process with AI_DEPLOY_INSTANCES_LABEL and no GCP_INSTANCE or GCP_ZONE.

Needs root: it boots sandbox hosts and changes nftables.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_deploy.artifact.build import build_artifact
from ai_deploy.artifact.check import check_artifact
from ai_deploy.ci.connect.tunnel import TUNNELS_DIR_ENV
from ai_deploy.gcp.iap import IAP_SOURCE_RANGE
from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp
from tests.gcp.conftest import WorkloadIdentity
from tests.gcp.flowkit import (
    REPO_ROOT,
    guest_output,
    mutating_compute_requests,
    process_alive,
    wait_until,
)
from tests.gcp.flowkit_fleet import (
    DEPLOY_USER,
    FLEET_LABEL,
    TARGET_TAG,
    FleetFlow,
    fleet_flow,
    host_keys_of,
    renew_host_keys,
    table_rows,
)
from tests.gcp.flowkit_servers import WebhookReceiver, write_stand_in_gcloud

pytestmark = [pytest.mark.gcp]

FIRST, SECOND, STOPPED = "ai-server-prod", "ai-server-prod-2", "ai-server-prod-3"
FIRST_ZONE, SECOND_ZONE, STOPPED_ZONE = "asia-northeast3-a", "us-central1-a", "asia-northeast3-b"
ENV_FILE_TEXT = "MODEL_LOAD_SECONDS=1\n"  # a short model load keeps deploys quick


@dataclass(frozen=True)
class Release:
    path: Path
    release_id: str


@pytest.fixture(scope="module")
def fleet_hosts() -> Iterator[list[Host]]:
    """Two sandbox hosts for the module; the second with host keys of its own."""
    if os.geteuid() != 0:
        pytest.fail("these tests boot systemd-nspawn sandbox hosts and need root")
    started: list[Host] = []
    try:
        started, _ = hosts.up(count=2, name=f"gcpfleet-{secrets.token_hex(3)}")
        renew_host_keys(started[1])
        assert host_keys_of(started[0]) != host_keys_of(started[1])
        yield started
    finally:
        if started:
            hosts.down([h.name for h in started])


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fleet")
    (path / "ai-server.env").write_text(ENV_FILE_TEXT)
    return path


@pytest.fixture(scope="module")
def releases(build_dir: Path) -> dict[str, Release]:
    """Two builds of the example AI server, each with a release id unique to this run."""
    made = {}
    for label in ("fleet", "next"):
        path = build_artifact(
            REPO_ROOT / "examples" / "ai-server",
            build_dir,
            artifact_id=f"{label}-{secrets.token_hex(4)}",
        )
        made[label] = Release(path, check_artifact(path).release_id)
    return made


@pytest.fixture
def fleet(
    gcp_fake: FakeGcp,
    github_workload_identity: WorkloadIdentity,
    fleet_hosts: list[Host],
    build_dir: Path,
) -> Iterator[FleetFlow]:
    github_workload_identity()  # credentials as google-github-actions/auth leaves them
    first, second = fleet_hosts
    key, value = FLEET_LABEL.split("=")
    gcp_fake.add_instance(
        STOPPED,
        STOPPED_ZONE,
        labels={key: value},
        tags=[TARGET_TAG],
        status="TERMINATED",
        nat_ip=None,
    )
    places = [(FIRST, FIRST_ZONE, first), (SECOND, SECOND_ZONE, second)]
    with fleet_flow(gcp_fake, places, build_dir / "ai-server.env") as flow:
        yield flow


def _deploy_until_served(fleet: FleetFlow, release: Release) -> None:
    """Both instances serving RELEASE (deployed here unless an earlier test left it so)."""
    try:
        if all(m.release_served() == release.release_id for m in fleet.members):
            return
    except Exception:  # nothing serves yet
        pass
    code, output = fleet.deploy(release.path)
    assert code == 0, output


def _ssh_keys_entry(fleet: FleetFlow, instance: str) -> str:
    """The ssh-keys value of the first setMetadata call on INSTANCE."""
    (first, *_) = fleet.fake.requests_to("POST", rf"/instances/{instance}/setMetadata$")
    items = {i["key"]: i.get("value") for i in (first.json() or {}).get("items", [])}
    return str(items["ssh-keys"])


def test_a_label_deploys_to_every_running_instance_by_name_and_leaves_nothing(
    fleet: FleetFlow, releases: dict[str, Release]
) -> None:
    release = releases["fleet"]
    code, output = fleet.deploy(release.path)

    assert code == 0, output
    # Listed by label across zones: both RUNNING ones by name, the TERMINATED one named, skipped.
    assert f"instance {STOPPED} in {STOPPED_ZONE} is TERMINATED, not RUNNING" in output
    for m in fleet.members:
        assert f"instance {m.instance} ({m.zone}): {m.host.address}" in output
        keys = len(host_keys_of(m.host))
        assert f"pinned {keys} host key(s) of {m.instance}" in output
        assert f"SSH to {m.instance} works" in output
        assert m.release_served() == release.release_id
        assert guest_output(m.host, "readlink /app/ai-server/current").strip() == (
            f"releases/{release.release_id}"
        )
    assert fleet.fake.requests_to("GET", rf"/instances/{STOPPED}") == []
    assert fleet.fake.requests_to("POST", rf"/instances/{STOPPED}/") == []
    # The rollout went by instance name: the canary, then the other one.
    steps = [line for line in output.splitlines() if line.startswith("== ")]
    assert steps == [f"== canary: {FIRST}", f"== batch 1: {SECOND}"], steps
    rows = table_rows(output)
    assert {n: (r["step"], r["after"], r["outcome"]) for n, r in rows.items()} == {
        FIRST: ("canary", release.release_id, "updated"),
        SECOND: ("batch 1", release.release_id, "updated"),
    }
    # One window for the tag, from the runner's /32, gone again.
    (rule,) = fleet.rules_created()
    assert rule["targetTags"] == [TARGET_TAG]
    assert rule["sourceRanges"] == [fleet.runner_range]
    deleted = fleet.fake.requests_to("DELETE", r"/global/firewalls/")
    assert [r.path.rsplit("/", 1)[-1] for r in deleted] == [rule["name"]]
    # One key for the run, written to each instance's metadata, added then removed, and the
    # one each host's sshd let the deploy in with.
    entries = {m.instance: _ssh_keys_entry(fleet, m.instance) for m in fleet.members}
    blobs = {entry.split(" ")[1] for entry in entries.values()}
    assert len(blobs) == 1, entries
    for m in fleet.members:
        assert entries[m.instance].startswith(f"{DEPLOY_USER}:ssh-ed25519 ")
        assert len(fleet.metadata_writes(m.instance)) == 2, m.instance
        stamp = json.loads(entries[m.instance].split(" google-ssh ", 1)[1])
        assert stamp["userName"] == DEPLOY_USER
        accepted = guest_output(m.host, "journalctl -q --no-pager -t sshd -g Accepted || true")
        assert f"Accepted publickey for {DEPLOY_USER} " in accepted, m.instance
    fleet.assert_nothing_left(output)


def test_a_second_identical_run_changes_nothing(
    fleet: FleetFlow, releases: dict[str, Release]
) -> None:
    release = releases["fleet"]
    _deploy_until_served(fleet, release)
    pids = {m.instance: m.main_pid() for m in fleet.members}

    code, output = fleet.deploy(release.path)

    assert code == 0, output
    rows = table_rows(output)
    assert {n: (r["before"], r["after"], r["outcome"]) for n, r in rows.items()} == {
        m.instance: (release.release_id, release.release_id, "unchanged") for m in fleet.members
    }
    assert {m.instance: m.main_pid() for m in fleet.members} == pids  # nothing restarted
    for m in fleet.members:
        assert m.release_served() == release.release_id
    fleet.assert_nothing_left(output)


def test_sigterm_during_the_rollout_leaves_nothing_and_no_lock(
    fleet: FleetFlow, releases: dict[str, Release]
) -> None:
    _deploy_until_served(fleet, releases["fleet"])
    release = releases["next"]
    process = fleet.start(
        "--artifact", str(release.path), "--health-interval", "1",
        "--canary", "1", "--batch-size", "1", "--data", f"env_file={fleet.env_file}", "-v",
    )  # fmt: skip
    batch = process.wait_for(r"^== batch 1: ", timeout=480)
    # The locks, the window and the keys are held for the whole rollout.
    assert all(m.lock_held() for m in fleet.members)
    with fleet.fake.lock:
        assert len(fleet.fake.state.firewalls) == 1
        for m in fleet.members:
            assert "ssh-keys" in fleet.fake.state.instance_named(m.instance).metadata
    # Into the batch's pyinfra run (it takes seconds: the signal comes at once).
    process.wait_for(r"^--> Starting operation: ", timeout=240, start=process.lines.index(batch))
    children = process.children()
    process.terminate()
    code = process.finish(timeout=180)
    output = process.output
    print(output)

    assert code == 143, output
    assert "interrupted by SIGTERM" in output
    # The table says where each host is: the canary updated, the batch's host interrupted.
    table = output[output.index("rollout stopped before its end; where each host is:") :]
    assert re.search(rf"^{FIRST}\s+canary\s+\S+\s+{release.release_id}\s+updated", table, re.M)
    assert re.search(rf"^{SECOND}\s+batch 1\s+\S+\s+-\s+interrupted", table, re.M), table
    assert not [pid for pid in children if process_alive(pid)], "a child outlived the deploy"
    # The canary had finished its step: it serves the new release.
    assert fleet.member(FIRST).release_served() == release.release_id
    fleet.assert_nothing_left(output, lock_wait_s=10)


def test_an_instance_without_the_target_tag_stops_before_any_rule(
    fleet: FleetFlow, releases: dict[str, Release]
) -> None:
    with fleet.fake.lock:
        fleet.fake.state.instance_named(SECOND).tags = ["db-server"]

    code, output = fleet.deploy(releases["fleet"].path)

    assert code == 2, output
    assert f"instance(s) {SECOND} lack the network tag {TARGET_TAG}" in output
    assert "failed phase: config" in output
    assert fleet.rules_created() == []
    assert mutating_compute_requests(fleet.fake) == []
    fleet.assert_nothing_left(output)


def _deploy_state(fleet: FleetFlow) -> dict[str, str]:
    """Each instance's releases, links, venvs, lock, revisions.log and service process."""
    script = (
        "cd /app/ai-server && ls -1 releases venvs && readlink current previous; "
        "if [ -e .deploy.lock ]; then echo LOCKED; fi; cat revisions.log; "
        "systemctl show -p MainPID -p ActiveState ai-server.service"
    )
    return {m.instance: guest_output(m.host, script) for m in fleet.members}


@pytest.mark.parametrize("preview", ["--dry-run", "--plan"])
def test_a_preview_of_a_label_fleet_changes_nothing_and_tells_nobody(
    fleet: FleetFlow, releases: dict[str, Release], preview: str
) -> None:
    _deploy_until_served(fleet, releases["fleet"])
    before = _deploy_state(fleet)
    assert "LOCKED" not in "".join(before.values())
    receiver = WebhookReceiver()
    try:
        code, output = fleet.deploy(releases["next"].path, preview, env=receiver.env())
    finally:
        receiver.stop()

    assert code == 0, output
    assert releases["next"].release_id in output
    assert _deploy_state(fleet) == before
    for m in fleet.members:
        assert m.release_served() == releases["fleet"].release_id
    assert receiver.deliveries == [], "a preview sent a notification"
    fleet.assert_nothing_left(output)


def test_through_iap_each_instance_gets_a_tunnel_and_a_killed_runs_tunnels_are_ended(
    fleet: FleetFlow, releases: dict[str, Release], tmp_path: Path
) -> None:
    """A label fleet through IAP: no window, one tunnel per instance, SSH and pyinfra through
    each. A run killed with SIGKILL once its tunnels are open leaves them running; the next
    run ends them (naming each) and deploys through tunnels of its own, which end with it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud-calls.jsonl"
    places = {m.instance: (m.zone, m.host.address) for m in fleet.members}
    write_stand_in_gcloud(
        bin_dir, calls, tmp_path / "connections.log", fleet.fake.state.project, places
    )
    # The standing rule lets IAP's range reach tcp:22; the stand-in gcloud carries the tunnel
    # from this machine, so the rule names the runner's address too (the mirrors enforce it).
    fleet.fake.add_firewall(
        "allow-ssh-from-iap", source_ranges=[IAP_SOURCE_RANGE, f"{fleet.myip.address}/32"]
    )
    with fleet.fake.lock:
        fleet.fake.state.firewalls["allow-ssh-from-iap"]["targetTags"] = [TARGET_TAG]
    records = tmp_path / "tunnels"
    env = {
        "AI_DEPLOY_SSH_TRANSPORT": "iap",
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        TUNNELS_DIR_ENV: str(records),
    }
    try:
        argv = ["--artifact", str(releases["next"].path), "--health-interval", "1"]
        # Each tunnel slow to open: the run is killed while it waits for the second one.
        slow = {**env, "STAND_IN_GCLOUD_DELAY_S": "3"}
        killed = fleet.start(*argv, "--data", f"env_file={fleet.env_file}", env=slow)
        killed.wait_for(r"IAP tunnel to \S+ listens on 127\.0\.0\.1:\d+")
        assert wait_until(lambda: len(list(records.glob("*.json"))) == 2, timeout=30)
        # Both stand-ins have started (each logs its call first): one ended by the next run's
        # sweep before its interpreter got that far would be missing from the calls below.
        assert wait_until(lambda: len(calls.read_text().splitlines()) == 2, timeout=30)
        left = [json.loads(p.read_text()) for p in records.glob("*.json")]
        assert sorted(r["instance"] for r in left) == [FIRST, SECOND]
        killed.kill()
        assert all(process_alive(r["pid"]) for r in left)

        code, output = fleet.deploy(releases["next"].path, env=env)

        assert code == 0, output
        for r in left:
            assert f"ended the IAP tunnel to {r['instance']} (pid {r['pid']})" in output
            assert not process_alive(r["pid"])
        assert list(records.glob("*.json")) == []
        for m in fleet.members:
            assert m.release_served() == releases["next"].release_id
        assert fleet.rules_created() == []  # no window through IAP
        tunnelled = [json.loads(line)[2] for line in calls.read_text().splitlines()]
        assert sorted(tunnelled) == [FIRST, FIRST, SECOND, SECOND]  # a tunnel each, per run
    finally:
        with fleet.fake.lock:
            fleet.fake.state.firewalls.pop("allow-ssh-from-iap", None)
        for m in fleet.members:
            m.mirror.sync()
    fleet.assert_nothing_left(output)
