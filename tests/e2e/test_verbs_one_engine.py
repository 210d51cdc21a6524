"""`ai-deploy rollback` and `restart` are rollouts of the one engine, over a two-host inventory.

- Every host's lock is held for the whole verb: while the outside health check asks about each
  host (a loopback server standing in for the health URL reads both hosts' locks on every
  request), both locks are there, the first host's after its own step and the second's before.
- Each host goes back to the release it served before its current one, step by step; rolling
  back again to the release already served changes and restarts nothing.
- A restart restarts each host, one at a time, behind the gate and the outside check; with
  `--no-gcp --host ADDRESS` only that host."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, require_root
from tests.e2e.deploykit import (
    REPO,
    Artifact,
    assert_ok,
    build_variant,
    main_pid,
    revisions,
    run_cli,
    run_deploy,
    serving_release,
)
from tests.e2e.lockwitness import lock_left, lock_witness

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"


@dataclass
class Pair:
    hosts: list[Sandbox]
    first: Artifact
    second: Artifact


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_root()
    work = tmp_path_factory.mktemp("verbs-one-engine")
    first, second = build_variant(work, "v23-first"), build_variant(work, "v23-second")
    started, inventory = hosts.up(count=2, name="v23-pair")
    try:
        yield Pair([Sandbox(h, inventory) for h in started], first, second)
    finally:
        hosts.down([h.name for h in started])


def _verb(pair: Pair, *args: str, **env: str) -> tuple[int, str]:
    inventory = str(pair.hosts[0].inventory)
    return run_cli(AI_DEPLOY, REPO, *args, "-i", inventory, **env)


def _no_lock_left(pair: Pair) -> None:
    for h in pair.hosts:
        assert not lock_left(h), f"{h.name}: the verb ended with the host's lock still taken"


def test_a_rollback_holds_every_lock_until_its_last_outside_check(pair: Pair) -> None:
    inventory = pair.hosts[0].inventory
    assert_ok(run_deploy(inventory, pair.first.data))
    assert_ok(run_deploy(inventory, pair.second.data))
    with lock_witness(pair.hosts) as witness:
        code, out = _verb(pair, "rollback", AI_DEPLOY_HEALTH_URL=witness.url)
    assert code == 0, out
    # one step per host (no canary in a rollback of two: the rollout settings' batches)
    assert len(witness.seen) >= 2, f"the outside check did not ask about each host:\n{out}"
    assert witness.always_held, (
        f"a host's lock was free while the outside check asked ({witness.seen}): another "
        f"deploy could have slipped in during the rollback\n{out}"
    )
    for h in pair.hosts:
        assert serving_release(h.address) == pair.first.release_id, out
        last = revisions(h)[-1].split()
        assert last[1:4] == ["rollback", pair.first.release_id, "ok"], last
    assert out.splitlines()[-1].startswith(
        f"\u2705 ai-server rollback succeeded: release {pair.first.release_id}"
    ), out
    _no_lock_left(pair)

    # Again, to the release they serve: nothing changes and nothing restarts.
    pids = [main_pid(h) for h in pair.hosts]
    code, out = _verb(pair, "rollback", pair.first.release_id)
    assert code == 0, out
    assert [main_pid(h) for h in pair.hosts] == pids, out
    for h in pair.hosts:
        assert serving_release(h.address) == pair.first.release_id, out
    _no_lock_left(pair)


def test_a_restart_goes_host_by_host_behind_the_outside_check(pair: Pair) -> None:
    serving = serving_release(pair.hosts[0].address)
    pids = [main_pid(h) for h in pair.hosts]
    with lock_witness(pair.hosts) as witness:
        code, out = _verb(pair, "restart", AI_DEPLOY_HEALTH_URL=witness.url)
    assert code == 0, out
    steps = [line for line in out.splitlines() if line.startswith("== batch ")]
    assert len(steps) == 2, f"a restart of two hosts is two steps of one host:\n{out}"
    assert witness.always_held, (witness.seen, out)
    for h, before in zip(pair.hosts, pids, strict=True):
        assert main_pid(h) not in ("0", before), out
        assert f"{h.name} | release {serving} restarted and healthy" in out, out
        assert revisions(h)[-1].split()[1:4] == ["restart", serving, "ok"]
    _no_lock_left(pair)


def test_a_restart_of_one_host_by_address_leaves_the_other_alone(pair: Pair) -> None:
    one, other = pair.hosts
    serving = serving_release(one.address)
    pids = [main_pid(h) for h in pair.hosts]
    code, out = run_cli(AI_DEPLOY, REPO, "restart", "--no-gcp", "--host", one.address)
    assert code == 0, out
    assert f"{one.address} | release {serving} restarted and healthy" in out, out
    assert main_pid(one) not in ("0", pids[0]), out
    assert main_pid(other) == pids[1], f"{other.name} was restarted too:\n{out}"
    assert revisions(one)[-1].split()[1:4] == ["restart", serving, "ok"]
    _no_lock_left(pair)
