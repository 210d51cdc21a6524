"""End-to-end: a token stream open while the service restarts (`restart` strategy, one sandbox
host) finishes intact when `drain_timeout_s` is above its length, and is cut when it is below:
the stand-in engine's /stream (a few seconds here), `ai-deploy restart` started once the first
token has arrived. The units on the host carry the setting, and a second deploy with the same
input changes nothing. Under blue/green, a stream open on the live colour when a new release
goes live finishes on the old release and the deploy reports the one connection it drained."""

from __future__ import annotations

import json
import os
import runpy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, require_root
from tests.e2e.deploykit import (
    Artifact,
    assert_ok,
    build_variant,
    cli,
    cli_ok,
    example_artifact,
    grand_total,
    main_pid,
    run_deploy,
    serving_release,
)

pytestmark = pytest.mark.e2e
# A 45-second stream: still open when `ai-deploy restart` (connect, facts, plan: several
# seconds on a loaded machine) reaches the stop, which each test checks in the deploy's report.
TOKENS, INTERVAL_S = 225, 0.2


@pytest.fixture(scope="module")
def host() -> Iterator[Sandbox]:
    require_root()
    started, inventory = hosts.up(count=1, name=f"s24-drain-{os.getpid() % 100_000}")
    yield Sandbox(started[0], inventory)  # pytest runs the rest whatever the tests did
    hosts.down([started[0].name])


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return example_artifact(tmp_path_factory.mktemp("s24-drain"))


@dataclass
class Stream:
    tokens: list[dict[str, object]] = field(default_factory=list)
    done: bool = False
    error: str = ""
    first: threading.Event = field(default_factory=threading.Event)


def open_stream(address: str, tokens: int = TOKENS) -> tuple[Stream, threading.Thread]:
    """GET /stream in a thread; the result fills in as the events arrive."""
    stream = Stream()

    def read() -> None:
        url = f"http://{address}:8000/stream"
        params = {"tokens": tokens, "interval": INTERVAL_S}
        try:
            with requests.get(url, params=params, stream=True, timeout=30) as reply:
                reply.raise_for_status()
                for line in reply.iter_lines(decode_unicode=True):
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        stream.done = True
                    else:
                        stream.tokens.append(json.loads(data))
                        stream.first.set()
        except requests.RequestException as exc:
            stream.error = repr(exc)
        finally:
            stream.first.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return stream, thread


def restart_under_stream(host: Sandbox, inventory: Path) -> tuple[Stream, str]:
    """Open a stream, restart the service once its first token is in, wait for both."""
    stream, thread = open_stream(host.address)
    assert stream.first.wait(30) and stream.tokens, stream.error
    out = cli_ok(cli(inventory, "restart"))
    thread.join(120)
    assert not thread.is_alive()
    return stream, out


def with_settings(host: Sandbox, **settings: object) -> Path:
    """The sandbox's inventory with SETTINGS in its host's data, so that `ai-deploy restart`
    (which takes no --data) applies them as the deploy did."""
    entries = runpy.run_path(str(host.inventory))["sandbox"]
    hosts_with = [(name, {**data, **settings}) for name, data in entries]
    path = host.inventory.with_name("s24-drain.py")
    path.write_text(f"sandbox = {hosts_with!r}\n")
    return path


def deploy(host: Sandbox, release: Artifact, drain_s: int | None) -> Path:
    """Deploy RELEASE with the restart strategy and DRAIN_S (None: the default), see the unit
    carry it; returns the inventory that carries these settings."""
    settings: dict[str, object] = {"deploy_strategy": "restart"}
    if drain_s is not None:
        settings["drain_timeout_s"] = drain_s
    inventory = with_settings(host, **settings)
    assert_ok(run_deploy(inventory, release.data))
    unit = host.sudo("cat /etc/systemd/system/ai-server.service")
    drain = 300 if drain_s is None else drain_s
    assert f"--timeout-graceful-shutdown {drain} " in unit.replace("\n", " ")
    assert f"TimeoutStopSec={drain + 15}\n" in unit
    return inventory


def test_a_stream_shorter_than_the_drain_finishes_across_a_restart(
    host: Sandbox, release: Artifact
) -> None:
    inventory = deploy(host, release, 60)
    again = assert_ok(run_deploy(inventory, release.data))
    assert grand_total(again).success == 0, again  # the same input: nothing changes
    before = main_pid(host)
    stream, out = restart_under_stream(host, inventory)
    assert stream.error == "", stream.error
    assert stream.done, f"the stream was cut after {len(stream.tokens)} tokens"
    assert [t["index"] for t in stream.tokens] == list(range(TOKENS))
    assert main_pid(host) != before  # the stream was served across a real restart
    assert "1 connection(s) open at the stop, all finished" in out, out
    assert "restarted and healthy" in out
    assert serving_release(host.address) == release.release_id


def test_a_stream_longer_than_the_drain_is_cut_at_the_drain(
    host: Sandbox, release: Artifact
) -> None:
    inventory = deploy(host, release, 1)
    stream, out = restart_under_stream(host, inventory)
    assert "1 connection(s) open at the stop, 1 still open after drain_timeout_s" in out, out
    assert not stream.done, "a stream longer than drain_timeout_s finished"
    assert 0 < len(stream.tokens) < TOKENS
    assert serving_release(host.address) == release.release_id


def test_bluegreen_keeps_the_old_colour_until_its_stream_ends(
    host: Sandbox, release: Artifact, tmp_path: Path
) -> None:
    """A stream open on the live colour when a new release goes live finishes on the old
    release; the deploy reports the one connection it drained."""
    bg = ("deploy_strategy=bluegreen", "drain_timeout_s=120", "bluegreen_drain_s=1")
    assert_ok(run_deploy(host.inventory, release.data, *bg))
    assert serving_release(host.address) == release.release_id
    new = build_variant(tmp_path, "s24-new")
    tokens = 150  # 30 s: open through the new release's start and the switch
    stream, thread = open_stream(host.address, tokens)
    assert stream.first.wait(30) and stream.tokens, stream.error
    out = assert_ok(run_deploy(host.inventory, new.data, *bg))
    thread.join(120)
    assert stream.error == "" and stream.done, (stream.error, len(stream.tokens), out)
    assert [t["index"] for t in stream.tokens] == list(range(tokens))
    assert {t["release"] for t in stream.tokens} == {release.release_id}
    assert "1 connection(s) open at the switch, drained in" in out, out
    assert serving_release(host.address) == new.release_id
    live = host.sudo("cat /app/ai-server/colors/LIVE").strip()
    old = "green" if live == "blue" else "blue"
    assert host.ssh(f"systemctl is-active ai-server@{old}", check=False).strip() == "inactive"


def test_the_default_drain_is_rendered_back(host: Sandbox, release: Artifact) -> None:
    deploy(host, release, None)
