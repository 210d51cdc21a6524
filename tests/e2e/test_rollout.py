"""A rollout over 4 sandbox hosts through `ai-deploy deploy` (no --host, no GCP_INSTANCE: the
inventory's hosts): canary first then batches in the order the plan prints, a second run that
changes nothing, a release failing on the canary or on one host of a later batch (a file on
that host the app checks) and every switched host put back, one rollout at a time, the plan as
JSON, and the locks dropped when the rollout is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, boot
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    build_variant,
    main_pid,
    serving_release,
)

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"
REFUSE_FILE = "/etc/ai-server-refuses-this-release"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Fleet:
    hosts: list[Sandbox]
    inventory: Path
    good: Artifact
    good2: Artifact
    refusing: Artifact  # fails to start where REFUSE_FILE exists
    broken: Artifact  # fails to start everywhere

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]


def _refuse_where_flagged(text: str) -> str:
    return text.replace(
        "from fastapi import FastAPI\n",
        "from fastapi import FastAPI\n\n"
        f"if Path({REFUSE_FILE!r}).exists():\n"
        f"    raise SystemExit('this host refuses the release: {REFUSE_FILE} exists')\n",
        1,
    )


def _always_broken(text: str) -> str:
    return text.replace(
        "from fastapi import FastAPI\n",
        "from fastapi import FastAPI\n\nraise SystemExit('broken release')\n",
        1,
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("rollout")
    good = build_variant(work, "fleet-good")
    good2 = build_variant(work, "fleet-good-2")
    refusing = build_variant(work, "fleet-refusing", patch_main=_refuse_where_flagged)
    broken = build_variant(work, "fleet-broken", patch_main=_always_broken)
    started, inventory = boot("rollout-fleet", count=4)
    try:
        sandboxes = sorted((Sandbox(h, inventory) for h in started), key=lambda s: s.name)
        yield Fleet(sandboxes, inventory, good, good2, refusing, broken)
    finally:
        hosts.down([h.name for h in started])


def rollout(fleet: Fleet, artifact: Artifact, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        _command(fleet, artifact, *args),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    proc.stdout, proc.stderr = _ANSI.sub("", proc.stdout), _ANSI.sub("", proc.stderr)
    return proc


def _command(fleet: Fleet, artifact: Artifact, *args: str) -> list[str]:
    return [
        str(AI_DEPLOY), "deploy", "--artifact", str(artifact.path), "-i", str(fleet.inventory),
        "--no-gcp", "--health-interval", "1", "--health-attempts", "20",
        # batches of several one-copy (socket) hosts: the floor lets the whole fleet go at once
        "--data", "rollout_max_unavailable=100%", *args,
    ]  # fmt: skip


def start_rollout(
    fleet: Fleet, artifact: Artifact, *args: str, split: bool = False
) -> subprocess.Popen[str]:
    """A rollout left running; SPLIT: stderr apart from stdout (--json), else together."""
    return subprocess.Popen(
        _command(fleet, artifact, *args),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if split else subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GCP_", "GITHUB_"))}
    return {**env, "NO_COLOR": "1", "TERM": "dumb"}


def releases_on(fleet: Fleet) -> dict[str, str]:
    return {h.name: serving_release(h.address) for h in fleet.hosts}


def current_links(fleet: Fleet) -> dict[str, str]:
    return {
        h.name: h.sudo(f"readlink {APP_ROOT}/current || true").strip().rsplit("/", 1)[-1]
        for h in fleet.hosts
    }


def has_release(h: Sandbox, release: str) -> bool:
    return h.sudo(f"test -e {APP_ROOT}/releases/{release} && echo yes || echo no").strip() == "yes"


def no_lock_anywhere(fleet: Fleet) -> bool:
    return all(
        h.sudo(f"test -e {APP_ROOT}/.deploy.lock && echo held || echo free").strip() == "free"
        for h in fleet.hosts
    )


def table_rows(output: str) -> dict[str, dict[str, str]]:
    """The per-host table at the end of the output: host -> step, before, after, outcome."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.split()[:2] == ["host", "step"])
    rows = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) < 5 or line.startswith(("✅", "❌", "⚠")):
            break
        if cells[1] == "batch":
            cells[1:3] = [f"batch {cells[2]}"]
        rows[cells[0]] = {
            "step": cells[1],
            "before": cells[2],
            "after": cells[3],
            "outcome": " ".join(cells[4:-1]),
        }
    return rows


def test_1_a_good_release_reaches_all_four_canary_first_then_changes_nothing(
    fleet: Fleet,
) -> None:
    first = rollout(fleet, fleet.good, "--canary", "1", "--batch-size", "2")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    out = first.stdout
    a, b, c, d = fleet.names
    # The plan, printed before anything changes, in the order the steps then ran.
    plan = [line.split() for line in out.splitlines() if line.startswith(("  canary", "  batch"))]
    assert [(p[0], p[1] if p[0] == "canary" else p[2]) for p in plan] == [
        ("canary", a), ("batch", b), ("batch", c), ("batch", d),
    ]  # fmt: skip
    steps = [line for line in out.splitlines() if line.startswith("== ")]
    assert steps == [f"== canary: {a}", f"== batch 1: {b}, {c}", f"== batch 2: {d}"]
    assert out.index(f"[{a}] deploy of {fleet.good.release_id} healthy") < out.index(
        f"== batch 1: {b}, {c}"
    )
    assert out.index("plan: 4 host(s)") < out.index(f"[{a}]")
    assert releases_on(fleet) == dict.fromkeys(fleet.names, fleet.good.release_id)
    rows = table_rows(out)
    assert {n: rows[n]["outcome"] for n in fleet.names} == dict.fromkeys(fleet.names, "updated")
    assert no_lock_anywhere(fleet)

    pids = {h.name: main_pid(h) for h in fleet.hosts}
    # -v: pyinfra's whole stream, with its results table for each step
    again = rollout(fleet, fleet.good, "--canary", "1", "--batch-size", "2", "-v")
    assert again.returncode == 0, again.stdout[-3000:]
    totals = [line.split() for line in again.stdout.splitlines() if "Grand total" in line]
    # Operations: all, succeeded (changed), failed, no change.
    assert len(totals) == 3 and all(t[3:5] == ["-", "-"] and t[5] == t[2] for t in totals), totals
    assert {h.name: main_pid(h) for h in fleet.hosts} == pids  # nothing restarted
    rows = table_rows(again.stdout)
    assert {n: rows[n]["outcome"] for n in fleet.names} == dict.fromkeys(fleet.names, "unchanged")


def test_2_a_release_failing_on_the_canary_never_reaches_the_others(fleet: Fleet) -> None:
    before = releases_on(fleet)
    result = rollout(fleet, fleet.broken, "--canary", "1", "--batch-size", "100%")
    assert result.returncode == 15, result.stdout[-4000:]
    canary, *others = fleet.hosts
    assert "rollout stopped in canary" in result.stdout
    assert "== batch 1" not in result.stdout
    for h in others:
        assert not has_release(h, fleet.broken.release_id), h.name
    assert releases_on(fleet) == before
    rows = table_rows(result.stdout)
    assert rows[canary.name]["outcome"] == "switched back (health)"  # by its own gate
    assert rows[canary.name]["after"] == before[canary.name]
    assert all(rows[h.name]["outcome"] == "not reached" for h in others)
    assert no_lock_anywhere(fleet)


def test_3_a_failure_in_a_later_batch_puts_every_host_back(fleet: Fleet) -> None:
    before = releases_on(fleet)
    assert set(before.values()) == {fleet.good.release_id}
    a, b, c, d = fleet.hosts
    c.sudo(f"touch {REFUSE_FILE}")
    try:
        result = rollout(fleet, fleet.refusing, "--canary", "1", "--batch-size", "1")
    finally:
        c.sudo(f"rm -f {REFUSE_FILE}")
    out = result.stdout
    assert result.returncode == 15, out[-5000:] + result.stderr[-2000:]
    assert f"== batch 1: {b.name}" in out and f"== batch 2: {c.name}" in out
    assert f"== batch 3: {d.name}" not in out
    assert f"switching back {a.name}, {b.name} to {fleet.good.release_id}" in out
    # Every host serves the previous release again, and the links say so.
    assert releases_on(fleet) == before
    assert current_links(fleet) == dict.fromkeys(fleet.names, fleet.good.release_id)
    assert not has_release(d, fleet.refusing.release_id)
    rows = table_rows(out)
    for h in (a, b, c, d):
        assert rows[h.name]["after"] == fleet.good.release_id, rows[h.name]
    assert [rows[h.name]["outcome"] for h in (a, b, c, d)] == [
        "switched back", "switched back", "switched back (health)", "not reached",
    ]  # fmt: skip
    assert f"now serving: {a.name}: {fleet.good.release_id}" in result.stderr
    assert no_lock_anywhere(fleet)


def test_4_a_second_rollout_stops_before_changing_anything_naming_the_holder(
    fleet: Fleet,
) -> None:
    wait = ("--canary", "1", "--batch-size", "100%", "--batch-wait", "30")
    first = start_rollout(fleet, fleet.good2, *wait)
    seen: list[str] = []
    try:
        assert first.stdout is not None
        for line in first.stdout:
            seen.append(line)
            if line.startswith("watching "):
                break
        assert any(line.startswith("watching ") for line in seen), "".join(seen)[-3000:]
        links = current_links(fleet)
        second = rollout(fleet, fleet.good, "--canary", "0")
        assert second.returncode == 14, second.stdout[-3000:]
        said = second.stdout + second.stderr
        assert "is locked by" in said and "(rollout of " + fleet.good2.release_id in said
        assert "nothing changed on any host" in said
        assert current_links(fleet) == links
        assert first.wait(timeout=600) == 0, "".join(seen)[-2000:] + first.stdout.read()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert releases_on(fleet) == dict.fromkeys(fleet.names, fleet.good2.release_id)
    assert no_lock_anywhere(fleet)


def test_5_the_plan_as_json_changes_nothing(fleet: Fleet) -> None:
    links = current_links(fleet)
    result = rollout(fleet, fleet.good, "--plan", "--json", "--canary", "25%", "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert [(p["host"], p["step"]) for p in doc["plan"]] == [
        (fleet.names[0], "canary"), (fleet.names[1], "batch 1"), (fleet.names[2], "batch 1"),
        (fleet.names[3], "batch 2"),
    ]  # fmt: skip
    assert {p["before"] for p in doc["plan"]} == {fleet.good2.release_id}
    assert {p["after"] for p in doc["plan"]} == {fleet.good.release_id}
    assert all(p["changes"] and not p["builds_venv"] for p in doc["plan"])
    assert "plan: 4 host(s) in 3 step(s)" in result.stderr
    assert current_links(fleet) == links
    assert no_lock_anywhere(fleet)


def test_6_a_killed_rollout_leaves_no_lock(fleet: Fleet) -> None:
    wait = ("--canary", "1", "--batch-size", "100%", "--batch-wait", "60")
    proc = start_rollout(fleet, fleet.good, *wait)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("watching "):
            break
    assert not no_lock_anywhere(fleet)  # held by the rollout, on every host
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while not no_lock_anywhere(fleet) and time.monotonic() < deadline:
        time.sleep(1)
    assert no_lock_anywhere(fleet)


def test_7_a_signal_still_gives_the_json_with_each_hosts_state(fleet: Fleet) -> None:
    canary_serves = serving_release(fleet.hosts[0].address)
    new = fleet.good2 if canary_serves == fleet.good.release_id else fleet.good
    wait = ("--canary", "1", "--batch-size", "100%", "--batch-wait", "60")
    proc = start_rollout(fleet, new, "--json", *wait, split=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("watching "):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    doc = json.loads(out)
    assert doc["exit_code"] == 143
    outcomes = {h["host"]: h["outcome"] for h in doc["hosts"]}
    first, *others = fleet.names
    assert outcomes == {first: "updated", **dict.fromkeys(others, "not reached")}
    assert "rollout stopped before its end; where each host is:" in err
    assert no_lock_anywhere(fleet)
