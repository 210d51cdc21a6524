"""The host's deploy lock (ai_deploy.host.release.lock), its shell run on a temporary tree."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import DEPLOYER, FakeHost

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.release.lock import acquire_lock, release_lock

pytestmark = pytest.mark.unit


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


def lock_dir(host: FakeHost) -> Path:
    return host.app_root / ".deploy.lock"


def lock_info(host: FakeHost) -> dict[str, object]:
    return json.loads((lock_dir(host) / "info").read_text())


def plant_lock(host: FakeHost, **info: object) -> Path:
    """A lock another deploy holds (its info as it writes it), aged AGE_S seconds."""
    age = float(info.pop("age_s", 0))  # type: ignore[arg-type]
    holder = {
        "who": "alice@ci",
        "deployer": "other-runner",
        "pid": os.getpid(),
        "action": "deploy",
        "release": "r9",
        "started": int(time.time() - age),
        "started_at": "2025-01-01T00:00:00Z",
        "token": "0123456789abcdef",
        **info,
    }
    d = lock_dir(host)
    d.mkdir(parents=True)
    (d / "info").write_text(json.dumps(holder) + "\n")
    os.utime(d, (time.time() - age, time.time() - age))
    return d


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_taken_with_its_holder_inside(host: FakeHost) -> None:
    spec = host.spec("r1", who="bob@laptop", pid=4242)
    token = acquire_lock(host.remote, spec)
    info = lock_info(host)
    assert info["token"] == token
    assert (info["who"], info["deployer"], info["pid"]) == ("bob@laptop", DEPLOYER, 4242)
    assert (info["action"], info["release"]) == ("deploy", "r1")
    # Nothing staged is left beside it.
    assert sorted(p.name for p in host.app_root.iterdir()) == [".deploy.lock"]


def test_lock_refused_with_the_holder_named(host: FakeHost) -> None:
    first = acquire_lock(host.remote, host.spec("r1", who="alice@ci", deployer="other-runner"))
    with pytest.raises(DeployFailed) as caught:
        acquire_lock(host.remote, host.spec("r2", who="bob@laptop"))
    assert caught.value.phase == "lock"
    message = str(caught.value)
    assert "locked by alice@ci (deploy of r1, from other-runner pid" in message
    assert "ai-deploy lock release" in message
    assert lock_info(host)["token"] == first  # the holder keeps it


def test_lock_waits_and_is_taken_when_the_holder_finishes(host: FakeHost) -> None:
    held = plant_lock(host)
    now = [1000.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s
        if len(slept) == 2:
            (held / "info").unlink()
            held.rmdir()  # the other deploy ends

    token = acquire_lock(
        host.remote, host.spec("r2", lock_wait_s=30), clock=lambda: now[0], sleep=sleep
    )
    assert lock_info(host)["token"] == token
    assert len(slept) == 2
    assert any("waiting up to 30 s for alice@ci" in m for m in host.remote.said)


def test_lock_taken_over_when_its_pid_on_this_deployer_is_dead(host: FakeHost) -> None:
    pid = dead_pid()
    plant_lock(host, deployer=DEPLOYER, pid=pid)
    token = acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == token
    assert any(f"pid {pid} on this machine) is no longer running" in w for w in host.remote.warned)
    assert sorted(p.name for p in host.app_root.iterdir()) == [".deploy.lock"]


def test_lock_kept_when_its_pid_on_this_deployer_is_alive(host: FakeHost) -> None:
    plant_lock(host, deployer=DEPLOYER, pid=os.getpid(), token="feedfacefeedface")
    with pytest.raises(DeployFailed, match="is locked by alice@ci"):
        acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == "feedfacefeedface"


def test_lock_kept_when_a_dead_pid_is_on_another_deployer(host: FakeHost) -> None:
    # That pid number means nothing on this machine: only age may end another runner's lock.
    plant_lock(host, deployer="other-runner", pid=dead_pid(), token="feedfacefeedface")
    with pytest.raises(DeployFailed, match="from other-runner"):
        acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == "feedfacefeedface"


def test_lock_taken_over_when_older_than_lock_stale_s(host: FakeHost) -> None:
    plant_lock(host, age_s=7300)
    spec = host.spec("r2")
    assert spec.lock_stale_s == 7200  # the group_data default this test relies on
    token = acquire_lock(host.remote, spec)
    assert lock_info(host)["token"] == token
    assert any("older than lock_stale_s (7200 s)" in w for w in host.remote.warned)


def test_lock_without_info_refused_while_young_taken_over_when_old(host: FakeHost) -> None:
    d = lock_dir(host)
    d.mkdir(parents=True)
    (d / "junk").write_text("half a deploy\n")
    with pytest.raises(DeployFailed, match="locked by an unknown deploy"):
        acquire_lock(host.remote, host.spec("r2"))
    old = time.time() - 120
    os.utime(d, (old, old))
    token = acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == token
    assert any("never wrote who it is" in w for w in host.remote.warned)


def test_lock_that_is_a_symlink_is_taken_over_without_touching_its_target(
    host: FakeHost, tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me\n")
    host.app_root.mkdir(parents=True)
    link = lock_dir(host)
    link.symlink_to(precious)
    old = time.time() - 120
    os.utime(link, (old, old), follow_symlinks=False)
    token = acquire_lock(host.remote, host.spec("r2"))
    assert not link.is_symlink() and lock_info(host)["token"] == token
    assert (precious / "data").read_text() == "keep me\n"


def test_lock_released_only_by_its_holder(host: FakeHost) -> None:
    spec = host.spec("r1")
    token = acquire_lock(host.remote, spec)
    release_lock(host.remote, spec, "0000000000000000")
    assert lock_info(host)["token"] == token
    release_lock(host.remote, spec, token)
    assert not lock_dir(host).exists()
    release_lock(host.remote, spec, token)  # twice: still nothing, no error
    assert not host.app_root.joinpath(".deploy.lock").exists()
