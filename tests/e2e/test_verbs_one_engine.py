"""`ai-deploy rollback` and `restart` are rollouts of the one engine, over a two-host inventory.

- Every host's lock is held for the whole verb: while the outside health check asks about each
  host (a loopback server standing in for the health URL reads both hosts' locks on every
  request), both locks are there, the first host's after its own step and the second's before.
- Each host goes back to the release it served before its current one, step by step; rolling
  back again to the release already served changes and restarts nothing.
- A restart restarts each host, one at a time, behind the gate and the outside check."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, require_root
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    assert_ok,
    build_variant,
    main_pid,
    read_host,
    revisions,
    run_cli,
    run_deploy,
    serving_release,
)

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"
LOCK = shlex.quote(f"{APP_ROOT}/.deploy.lock")


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


@dataclass
class BothLocks:
    """A health URL on loopback that answers 200 and, on each request, reads which of HOSTS
    have their deploy lock taken at that moment."""

    hosts: list[Sandbox]
    seen: list[tuple[bool, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                script = f"test -d {LOCK} && echo HELD || true"
                witness.seen.append(
                    tuple("HELD" in read_host(h, script, "the lock") for h in witness.hosts)
                )
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _verb(pair: Pair, *args: str, **env: str) -> tuple[int, str]:
    inventory = str(pair.hosts[0].inventory)
    return run_cli(AI_DEPLOY, REPO, *args, "-i", inventory, **env)


def _no_lock_left(pair: Pair) -> None:
    for h in pair.hosts:
        left = read_host(h, f"test -e {LOCK} && echo LEFT || true", "the lock")
        assert "LEFT" not in left, f"{h.name}: the verb ended with the host's lock still taken"


def test_a_rollback_holds_every_lock_until_its_last_outside_check(pair: Pair) -> None:
    inventory = pair.hosts[0].inventory
    assert_ok(run_deploy(inventory, pair.first.data))
    assert_ok(run_deploy(inventory, pair.second.data))
    witness = BothLocks(pair.hosts)
    try:
        code, out = _verb(pair, "rollback", AI_DEPLOY_HEALTH_URL=witness.url)
    finally:
        witness.close()
    assert code == 0, out
    # one step per host (no canary in a rollback of two: the rollout settings' batches)
    assert len(witness.seen) >= 2, f"the outside check did not ask about each host:\n{out}"
    assert all(all(seen) for seen in witness.seen), (
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
    witness = BothLocks(pair.hosts)
    try:
        code, out = _verb(pair, "restart", AI_DEPLOY_HEALTH_URL=witness.url)
    finally:
        witness.close()
    assert code == 0, out
    steps = [line for line in out.splitlines() if line.startswith("== batch ")]
    assert len(steps) == 2, f"a restart of two hosts is two steps of one host:\n{out}"
    assert all(all(seen) for seen in witness.seen) and witness.seen, (witness.seen, out)
    for h, before in zip(pair.hosts, pids, strict=True):
        assert main_pid(h) not in ("0", before), out
        assert f"{h.name} | release {serving} restarted and healthy" in out, out
        assert revisions(h)[-1].split()[1:4] == ["restart", serving, "ok"]
    _no_lock_left(pair)
