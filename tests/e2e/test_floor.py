"""The floor of a rollout (rollout_max_unavailable) over 3 sandbox hosts with one copy each
(the socket strategy), no load balancer:

- a batch larger than the floor allows is refused with exit 2, `--plan` and the deploy alike,
  before any change: each host keeps its release, its process, its revisions.log, and has no
  lock and no trace of the new release; so is a canary of one while another host is down;
- the plan prints each host's method with its expected time out of service (read from the
  host's last-start.json where there is one) and the floor, as lines and as JSON;
- a release failing on the third host is switched back one host at a time, in the order the
  hosts were switched (the deploy's output and each host's revisions.log say so), and the
  fleet ends on the previous release everywhere; deploying that release again changes nothing
  and restarts nothing."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, require_root
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    build_variant,
    cli_env,
    health,
    main_pid,
    revisions,
    run_cli,
    serving_release,
)
from tests.e2e.lockwitness import lock_left
from tests.e2e.test_rollout import REFUSE_FILE, _refuse_where_flagged

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"


@dataclass
class Fleet:
    hosts: list[Sandbox]
    inventory: Path
    base: Artifact
    good: Artifact
    refusing: Artifact  # fails to start where REFUSE_FILE exists


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_root()
    work = tmp_path_factory.mktemp("floor")
    base, good = build_variant(work, "f25-base"), build_variant(work, "f25-good")
    refusing = build_variant(work, "f25-refusing", patch_main=_refuse_where_flagged)
    started, inventory = hosts.up(count=3, name="f25-floor")
    try:
        sandboxes = sorted((Sandbox(h, inventory) for h in started), key=lambda s: s.name)
        f = Fleet(sandboxes, inventory, base, good, refusing)
        code, out = deploy(f, base, "--canary", "0", "--batch-size", "100%",
                           "--data", "rollout_max_unavailable=100%")  # fmt: skip
        assert code == 0, out
        yield f
    finally:
        hosts.down([h.name for h in started])


def deploy_args(fleet: Fleet, artifact: Artifact, *args: str) -> list[str]:
    return [
        "deploy", "--artifact", str(artifact.path), "-i", str(fleet.inventory), "--no-gcp",
        "--health-interval", "1", "--health-attempts", "20", *args,
    ]  # fmt: skip


def deploy(fleet: Fleet, artifact: Artifact, *args: str) -> tuple[int, str]:
    return run_cli(AI_DEPLOY, REPO, *deploy_args(fleet, artifact, *args))


def state(fleet: Fleet) -> dict[str, tuple[str, str, list[str]]]:
    """Each host's serving release, main process and revisions.log."""
    return {h.name: (serving_release(h.address), main_pid(h), revisions(h)) for h in fleet.hosts}


def test_a_batch_the_floor_does_not_allow_is_refused_with_exit_2_before_any_change(
    fleet: Fleet,
) -> None:
    before = state(fleet)
    for preview in (("--plan",), ()):
        code, out = deploy(fleet, fleet.good, "--canary", "1", "--batch-size", "2", *preview)
        assert code == 2, out
        assert "at most 1 host out of service at once (rollout_max_unavailable=1)" in out
        a, b, c = fleet.hosts
        assert (
            f"batch 1 would take 2 of 3 host(s) out of service at once ({b.name}: one-copy "
            f"restart; {c.name}: one-copy restart), but rollout_max_unavailable='1' allows 1"
        ) in out, out
        assert "rollout_max_unavailable=2" in out and "nothing changed on any host" in out
        assert f"== canary: {a.name}" not in out, out
    assert state(fleet) == before
    for h in fleet.hosts:
        assert not lock_left(h), f"{h.name}: the refused deploy left its lock"
        found = h.sudo(f"ls {APP_ROOT}/releases {APP_ROOT}/.incoming 2>/dev/null || true")
        assert fleet.good.release_id not in found, f"{h.name} got the refused release"


def test_a_host_already_down_counts_and_refuses_a_canary_that_would_take_a_second_out(
    fleet: Fleet,
) -> None:
    a, _, c = fleet.hosts
    c.sudo("systemctl stop ai-server.socket ai-server.service")
    try:
        before = {h.name: (main_pid(h), revisions(h)) for h in fleet.hosts}
        code, out = deploy(fleet, fleet.good)  # the defaults: a canary of 1, batches of 1
        assert code == 2, out
        assert f"  {c.name} is out of service now: " in out, out
        assert (
            f"canary would take 2 of 3 host(s) out of service at once ({a.name}: one-copy "
            f"restart; {c.name}: unhealthy now)"
        ) in out, out
        assert f"bring {c.name} back into service first" in out, out
        assert {h.name: (main_pid(h), revisions(h)) for h in fleet.hosts} == before
        assert all(not lock_left(h) for h in fleet.hosts)
    finally:
        c.sudo("systemctl start ai-server.socket ai-server.service")
    deadline = time.monotonic() + 120  # a guard for the next tests, not a timing assertion
    while time.monotonic() < deadline:
        try:
            if health(c.address, timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    assert serving_release(c.address) == fleet.base.release_id


def test_the_plan_prints_each_hosts_method_its_expected_outage_and_the_floor(
    fleet: Fleet,
) -> None:
    a, b, c = fleet.hosts
    last = {"release": fleet.base.release_id, "strategy": "socket", "outage_s": 7.9,
            "start_s": 7.6, "at": "2026-12-07T20:00:00Z"}  # fmt: skip
    b.sudo(f"printf '%s' {json.dumps(json.dumps(last))} > {APP_ROOT}/last-start.json")
    a.sudo(f"rm -f {APP_ROOT}/last-start.json")  # as a host deployed before starts were kept
    try:
        code, out = deploy(fleet, fleet.good, "--plan")
        assert code == 0, out
        steps = [line for line in out.splitlines() if line.startswith(("  canary", "  batch"))]
        lines = {line.split()[1 if line.startswith("  canary") else 2]: line for line in steps}
        assert lines[a.name].endswith(
            "; one-copy restart, out of service unknown (no start measured yet)"
        ), out
        assert lines[b.name].endswith("; one-copy restart, out of service ~8 s"), out
        assert "at most 1 host out of service at once (rollout_max_unavailable=1)" in out
        done = subprocess.run(
            [str(AI_DEPLOY), *deploy_args(fleet, fleet.good, "--plan", "--json")],
            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)  # the data alone on stdout, the log on stderr
        assert doc["floor"] == {"rollout_max_unavailable": "1", "allowed": 1, "fleet": 3}
        planned = {p["host"]: p for p in doc["plan"]}
        assert planned[b.name]["method"] == "one-copy restart"
        assert planned[b.name]["expected_outage_s"] == 7.6
        assert planned[a.name]["expected_outage_s"] is None and planned[c.name]["out_of_service"]
    finally:
        b.sudo(f"rm -f {APP_ROOT}/last-start.json")


def test_a_failed_rollout_is_switched_back_one_host_at_a_time_and_never_ends_mixed(
    fleet: Fleet,
) -> None:
    a, b, c = fleet.hosts
    base = fleet.base.release_id
    c.sudo(f"touch {REFUSE_FILE}")
    try:
        code, out = deploy(fleet, fleet.refusing, "--canary", "1", "--batch-size", "1")
    finally:
        c.sudo(f"rm -f {REFUSE_FILE}")
    assert code == 15, out
    said = [line for line in out.splitlines() if line.startswith("switching back ")]
    assert said == [f"switching back {a.name} to {base}", f"switching back {b.name} to {base}"]
    for h in fleet.hosts:
        assert serving_release(h.address) == base, out
    back = {h.name: [line.split() for line in revisions(h) if " rollback " in line][-1]
            for h in (a, b)}  # fmt: skip
    assert [back[h.name][1:4] for h in (a, b)] == [["rollback", base, "ok"]] * 2
    assert back[a.name][0] <= back[b.name][0]  # a restored before b (ISO 8601 UTC)
    assert revisions(c)[-1].split()[2] == fleet.refusing.release_id  # its own gate put it back

    # Again, the release every host serves: nothing changes, nothing restarts.
    before = state(fleet)
    code, out = deploy(fleet, fleet.base)
    assert code == 0, out
    assert {name: s[:2] for name, s in state(fleet).items()} == {
        name: s[:2] for name, s in before.items()
    }


def test_a_host_that_goes_down_mid_rollout_stops_it_before_a_step_would_break_the_floor(
    fleet: Fleet,
) -> None:
    """A host stops serving while the first step runs: the next step would take a second host
    out, so the rollout stops before it with exit 17, the host already switched keeps the new
    release and the others are untouched; once the host is back, the same deploy finishes and
    leaves the switched host alone."""
    a, b, c = fleet.hosts
    base, good = fleet.base.release_id, fleet.good.release_id
    proc = subprocess.Popen(
        [str(AI_DEPLOY), *deploy_args(fleet, fleet.good, "--canary", "0", "--batch-size", "1")],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"== batch 1: {a.name}"):
                c.sudo("systemctl stop ai-server.socket ai-server.service")
        code = proc.wait(timeout=600)
        out = "".join(lines)
        print(out)
        assert code == 17, out
        assert "rollout stopped before batch 2: batch 2 would take 2 of 3 host(s)" in out, out
        assert f"{c.name}: unhealthy now" in out and "== batch 2:" not in out, out
        assert serving_release(a.address) == good and serving_release(b.address) == base
        assert all(not lock_left(h) for h in fleet.hosts)
    finally:
        if proc.poll() is None:
            proc.kill()
        c.sudo("systemctl start ai-server.socket ai-server.service")
    before_a = main_pid(a)
    code, out = deploy(fleet, fleet.good, "--canary", "0", "--batch-size", "1")
    assert code == 0, out
    assert {h.name: serving_release(h.address) for h in fleet.hosts} == dict.fromkeys(
        [h.name for h in fleet.hosts], good
    )
    assert main_pid(a) == before_a  # already on the release: left alone
    code, out = deploy(fleet, fleet.base, "--canary", "0", "--batch-size", "1")
    assert code == 0, out  # the next tests start from the base release
