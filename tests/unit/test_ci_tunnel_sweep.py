"""Tunnels a killed run left are ended by the next run: a recorded tunnel whose run is gone is
ended (its process group), one whose run is alive is left alone, and a record whose pid now
names another process (reused) ends nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_deploy.ci.connect import tunnel

pytestmark = pytest.mark.unit


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[str]]:
    """A process standing in for gcloud's tunnel: its own session, as the run starts it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        start_new_session=True,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _record(env: dict[str, str], proc: subprocess.Popen[str], run: int, **over: object) -> Path:
    directory = tunnel.tunnels_dir(env)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    rec = {
        "instance": "vm-1",
        "pid": proc.pid,
        "started": tunnel._started(proc.pid),
        "run": run,
        "run_started": tunnel._started(run),
        **over,
    }
    path = directory / f"{proc.pid}.json"
    path.write_text(json.dumps(rec))
    return path


def test_a_tunnel_whose_run_is_gone_is_ended(
    tmp_path: Path, sleeper: subprocess.Popen[str]
) -> None:
    env = {tunnel.TUNNELS_DIR_ENV: str(tmp_path / "t")}
    path = _record(env, sleeper, _dead_pid())
    said: list[str] = []
    tunnel.sweep_left_tunnels(env, said.append)
    assert sleeper.wait(timeout=10) is not None
    assert not path.exists()
    assert said and "vm-1" in said[0]


def test_a_tunnel_of_a_live_run_is_left_alone(
    tmp_path: Path, sleeper: subprocess.Popen[str]
) -> None:
    env = {tunnel.TUNNELS_DIR_ENV: str(tmp_path / "t")}
    path = _record(env, sleeper, os.getpid())
    tunnel.sweep_left_tunnels(env, lambda _: None)
    assert sleeper.poll() is None
    assert path.exists()


def test_a_reused_pid_is_not_ended(tmp_path: Path, sleeper: subprocess.Popen[str]) -> None:
    env = {tunnel.TUNNELS_DIR_ENV: str(tmp_path / "t")}
    path = _record(env, sleeper, _dead_pid(), started="1")  # another process had that pid
    tunnel.sweep_left_tunnels(env, lambda _: None)
    assert sleeper.poll() is None
    assert not path.exists()
