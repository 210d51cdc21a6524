"""One deploy engine: `ai-deploy deploy --host ADDRESS` keeps the promises of a rollout.

- The host's lock is held from before the first change to after the last switch-back: while
  the outside health check asks (a loopback server standing in for the health URL reads the
  host's lock on every request and answers 503), the lock is there.
- A switch-back moves only what this run changed, to what it served before: a host already
  serving the release, whose outside check fails, is left on that release (never moved to its
  `previous`)."""

from __future__ import annotations

import shlex
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, require_root
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    assert_ok,
    build_variant,
    read_host,
    run_cli,
    run_deploy,
    serving_release,
)
from tests.e2e.lockwitness import lock_left, lock_witness

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"


@dataclass
class One:
    host: Sandbox
    first: Artifact
    second: Artifact
    env_file: Path


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[One]:
    require_root()
    work = tmp_path_factory.mktemp("one-engine")
    first, second = build_variant(work, "e23-first"), build_variant(work, "e23-second")
    env_file = work / "app.env"
    env_file.write_text("MODEL_LOAD_SECONDS=1\n")
    started, inventory = hosts.up(count=1, name="e23-one")
    try:
        yield One(Sandbox(started[0], inventory), first, second, env_file)
    finally:
        hosts.down([h.name for h in started])


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/health"


def _deploy(one: One, artifact: Artifact, *args: str, **env: str) -> tuple[int, str]:
    return run_cli(
        AI_DEPLOY, REPO, "deploy", "--artifact", str(artifact.path), "--no-gcp",
        "--host", one.host.address, "--health-interval", "1",
        "--data", f"env_file={one.env_file}", *args, **env,
    )  # fmt: skip


def _links(host: Sandbox) -> str:
    root = shlex.quote(APP_ROOT)
    return read_host(host, f"readlink {root}/current {root}/previous || true", "the links")


def test_the_lock_is_held_while_the_outside_check_asks_and_through_the_switch_back(
    one: One,
) -> None:
    code, out = _deploy(one, one.first, "--health-attempts", "20")
    assert code == 0, out
    with lock_witness([one.host], 503) as witness:
        code, out = _deploy(one, one.second, "--health-attempts", "2",
                            AI_DEPLOY_HEALTH_URL=witness.url)  # fmt: skip
    assert code != 0, out
    assert witness.seen, f"the outside health check never asked the witness:\n{out}"
    assert witness.always_held, (
        f"the host's lock was free while the outside check asked ({witness.seen}): another "
        f"deploy could have slipped in before the switch-back\n{out}"
    )
    assert not lock_left(one.host), "the run ended with the host's lock still taken"


def test_an_already_serving_host_is_not_moved_past_where_it_started(one: One) -> None:
    assert_ok(run_deploy(one.host.inventory, one.first.data, f"env_file={one.env_file}"))
    assert_ok(run_deploy(one.host.inventory, one.second.data, f"env_file={one.env_file}"))
    before = _links(one.host)
    lines = before.split()
    assert lines[0].endswith(one.second.release_id), before
    assert lines[1].endswith(one.first.release_id), before
    code, out = _deploy(one, one.second, "--health-attempts", "2",
                        AI_DEPLOY_HEALTH_URL=_closed_port_url())  # fmt: skip
    assert code == 16, out  # unhealthy, and nothing this run switched to put back
    assert serving_release(one.host.address) == one.second.release_id, out
    assert _links(one.host) == before, (
        f"the host served {one.second.release_id} before this run and was moved:\n{out}"
    )
