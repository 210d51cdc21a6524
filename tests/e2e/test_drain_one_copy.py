"""End-to-end on one sandbox host (socket, then restart: one copy): a token stream open when a new
release goes live. With drain_mode "wait" (the default) the deploy counts it before the old
process stops, the stream finishes intact and the deploy says so; with "cut" the deploy says it
cut one connection, and the stream is cut. Never a silent cut."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    Artifact,
    assert_ok,
    build_variant,
    example_artifact,
    grand_total,
    run_deploy,
    sandbox_with,
    serving_release,
)
from tests.e2e.test_drain import Stream, open_stream

pytestmark = pytest.mark.e2e
TOKENS = 100  # 20 s at the stream's 0.2 s: open well past the deploy's preparation
SETTINGS = {"deploy_strategy": "socket", "drain_timeout_s": 90}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with sandbox_with("r24-stop", SETTINGS, tmp_path_factory.mktemp("r24-stop-inv")) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("r24-stop")


@pytest.fixture(scope="module")
def base(host: Sandbox, workdir: Path) -> Artifact:
    artifact = example_artifact(workdir)
    assert_ok(run_deploy(host.inventory, artifact.data))
    again = assert_ok(run_deploy(host.inventory, artifact.data))
    assert grand_total(again).success == 0, again  # the same input: nothing changes
    return artifact


def deploy_under_stream(host: Sandbox, release: Artifact, *data: str) -> tuple[Stream, str]:
    """Open a stream on the serving release, deploy RELEASE once its first token is in."""
    stream, thread = open_stream(host.address, TOKENS)
    assert stream.first.wait(30) and stream.tokens, stream.error
    out = assert_ok(run_deploy(host.inventory, release.data, *data))
    thread.join(120)
    assert not thread.is_alive()
    assert serving_release(host.address) == release.release_id
    return stream, out


def test_wait_lets_an_open_stream_finish_and_says_so(
    host: Sandbox, base: Artifact, workdir: Path
) -> None:
    if serving_release(host.address) != base.release_id:
        assert_ok(run_deploy(host.inventory, base.data))
    new = build_variant(workdir, "r24-wait", patch_main=lambda t: t + "\n# wait\n")
    stream, out = deploy_under_stream(host, new)
    assert "1 connection(s) open on port 8000: ai-server.service finishes them" in out, out
    assert "1 connection(s) open at the stop, all finished" in out
    assert stream.error == "" and stream.done, f"cut after {len(stream.tokens)} tokens"
    assert [t["index"] for t in stream.tokens] == list(range(TOKENS))
    assert {t["release"] for t in stream.tokens} == {base.release_id}


def test_cut_says_how_many_it_cut(host: Sandbox, base: Artifact, workdir: Path) -> None:
    new = build_variant(workdir, "r24-cut", patch_main=lambda t: t + "\n# cut\n")
    stream, out = deploy_under_stream(host, new, "drain_mode=cut")
    assert "drain_mode=cut: cutting 1 connection(s) open on port 8000" in out, out
    assert not stream.done and 0 < len(stream.tokens) < TOKENS


def test_the_restart_strategy_looks_at_the_same_connections(
    host: Sandbox, base: Artifact, workdir: Path
) -> None:
    """Under `restart` the old process binds the port itself: its stream is waited for too."""
    assert_ok(run_deploy(host.inventory, base.data, "deploy_strategy=restart"))
    assert host.sudo("systemctl is-active ai-server.socket || true").strip() != "active"
    new = build_variant(workdir, "r24-restart", patch_main=lambda t: t + "\n# restart\n")
    stream, out = deploy_under_stream(host, new, "deploy_strategy=restart")
    assert "1 connection(s) open at the stop, all finished" in out, out
    assert stream.error == "" and stream.done, f"cut after {len(stream.tokens)} tokens"
