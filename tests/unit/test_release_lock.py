"""The host's deploy lock (ai_deploy.host.release.lock), its shell run on a temporary tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import DEPLOYER, FakeHost

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.release.identity import RUN_ID, Machine, this_machine
from ai_deploy.host.release.lease import LeasedRemote
from ai_deploy.host.release.lock import (
    acquire_lock,
    read_held,
    release_if_held_by,
    release_lock,
    take_script,
)

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
    """A lock another deploy holds (its info as it writes it), its lease last renewed AGE_S
    seconds ago."""
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
    age_lease(d, age)
    return d


def age_lease(lock: Path, age: float) -> None:
    """LOCK's lease last renewed AGE seconds ago (host clock)."""
    then = time.time() - age
    (lock / "lease").touch()
    os.utime(lock / "lease", (then, then))
    os.utime(lock, (then, then))


def lease_age(host: FakeHost) -> float:
    return time.time() - (lock_dir(host) / "lease").stat().st_mtime


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
    assert (lock_dir(host) / "lease").is_file() and lease_age(host) < 5
    # Nothing staged is left beside it (the guard file stays: flock needs a file that lasts).
    assert sorted(p.name for p in host.app_root.iterdir()) == [".deploy.lock", ".deploy.lock.guard"]


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
            shutil.rmtree(held)  # the other deploy ends

    token = acquire_lock(
        host.remote, host.spec("r2", lock_wait_s=30), clock=lambda: now[0], sleep=sleep
    )
    assert lock_info(host)["token"] == token
    assert len(slept) == 2
    assert any("waiting up to 30 s for alice@ci" in m for m in host.remote.said)


HERE = this_machine()


def test_this_machine_is_known_here() -> None:
    # The tests below that take a lock over by its pid need this machine to be named.
    assert HERE.known, HERE


def test_lock_taken_over_when_its_pid_on_this_deployer_is_dead(host: FakeHost) -> None:
    pid = dead_pid()
    plant_lock(host, deployer="renamed-since", pid=pid, **HERE.as_info())
    token = acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == token
    assert any(f"pid {pid} on this machine) is no longer running" in w for w in host.remote.warned)
    assert sorted(p.name for p in host.app_root.iterdir()) == [".deploy.lock", ".deploy.lock.guard"]


def test_lock_kept_when_its_pid_on_this_deployer_is_alive(host: FakeHost) -> None:
    alive = os.getppid()  # another process of this machine, alive while the test runs
    plant_lock(host, deployer=DEPLOYER, pid=alive, token="feedfacefeedface", **HERE.as_info())
    with pytest.raises(DeployFailed, match="is locked by alice@ci"):
        acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == "feedfacefeedface"


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"machine_id": "0" * 32, "boot_id": HERE.boot_id, "pid_ns": HERE.pid_ns},  # a clone
        {"machine_id": HERE.machine_id, "boot_id": "f" * 32, "pid_ns": HERE.pid_ns},  # rebooted
        {"machine_id": HERE.machine_id, "boot_id": HERE.boot_id, "pid_ns": "pid:[1]"},  # container
        {"machine_id": "", "boot_id": "", "pid_ns": ""},  # a machine that could not name itself
        {},  # written before holders named their machine
    ],
    ids=["machine-id", "boot-id", "pid-namespace", "unknown", "unnamed"],
)
def test_fresh_lease_kept_from_a_rival_with_the_same_host_name_and_a_dead_pid_elsewhere(
    host: FakeHost, elsewhere: dict[str, str]
) -> None:
    # Same host name (a container on the host's network, a laptop's default name) and a pid
    # that is dead here: the pid is another machine's, so only the lease's age may end it.
    pid = dead_pid()
    plant_lock(host, deployer=DEPLOYER, pid=pid, token="feedfacefeedface", **elsewhere)
    with pytest.raises(DeployFailed, match=f"from {DEPLOYER} pid {pid}"):
        acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == "feedfacefeedface"
    assert host.remote.warned == []


def test_lock_taken_over_when_its_pid_here_is_now_this_deploys(host: FakeHost) -> None:
    # A lock left by an earlier run whose pid this very deploy has now: that run is gone.
    plant_lock(host, deployer=DEPLOYER, pid=os.getpid(), run_id="0" * 16, **HERE.as_info())
    token = acquire_lock(host.remote, host.spec("r2", pid=os.getpid()))
    assert lock_info(host)["token"] == token
    assert any("that pid is this deploy's now" in w for w in host.remote.warned)


def test_lock_names_its_holder_uniquely(host: FakeHost) -> None:
    acquire_lock(host.remote, host.spec("r1", pid=4242))
    info = lock_info(host)
    assert Machine.from_info(info) == HERE and info["run_id"] == RUN_ID and info["pid"] == 4242


def test_lock_kept_when_a_dead_pid_is_on_another_deployer(host: FakeHost) -> None:
    # That pid number means nothing on this machine: only age may end another runner's lock.
    plant_lock(host, deployer="other-runner", pid=dead_pid(), token="feedfacefeedface")
    with pytest.raises(DeployFailed, match="from other-runner"):
        acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == "feedfacefeedface"


def test_lease_not_renewed_for_lock_lease_s_taken_over_from_another_machine(
    host: FakeHost,
) -> None:
    plant_lock(host, deployer="other-runner", age_s=190)
    spec = host.spec("r2")
    assert spec.lock_lease_s == 180  # the group_data default this test relies on
    token = acquire_lock(host.remote, spec)
    assert lock_info(host)["token"] == token
    assert lease_age(host) < 5  # the new holder's lease is fresh
    assert any(
        "lease was not renewed for 19" in w and "lock_lease_s is 180 s" in w
        for w in host.remote.warned
    )
    assert sorted(p.name for p in host.app_root.iterdir()) == [".deploy.lock", ".deploy.lock.guard"]


def test_lease_renewed_within_lock_lease_s_kept_however_old_the_lock(host: FakeHost) -> None:
    # Started hours ago, but renewed 170 s ago: its holder is alive, wherever it runs.
    plant_lock(host, deployer="other-runner", started=int(time.time() - 7300), age_s=170)
    with pytest.raises(DeployFailed, match="lock_lease_s \\(180 s\\) is taken over"):
        acquire_lock(host.remote, host.spec("r2"))
    assert lock_info(host)["token"] == "0123456789abcdef"


def test_lease_lock_lease_s_is_a_setting(host: FakeHost) -> None:
    plant_lock(host, deployer="other-runner", age_s=40)
    with pytest.raises(DeployFailed):
        acquire_lock(host.remote, host.spec("r2"))
    token = acquire_lock(host.remote, host.spec("r2", lock_lease_s=30))
    assert lock_info(host)["token"] == token


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


# --- takeover is a compare-and-swap --------------------------------------------------------


def race_takeovers(host: FakeHost, takers: int) -> list[str]:
    """TAKERS deploys from as many machines take over one stale lock at the same moment (each
    thread runs the real shell); returns the tokens of those that got the lock."""
    start = threading.Barrier(takers)
    won: list[str] = []

    def take(i: int) -> None:
        spec = host.spec(f"r{i}", deployer=f"runner-{i}", who=f"taker{i}@ci")
        start.wait()
        try:
            won.append(acquire_lock(host.remote, spec))
        except DeployFailed as exc:
            assert "is locked by taker" in str(exc), exc  # refused by the winner's fresh lease

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return won


@pytest.mark.parametrize("takers", [2, 5])
def test_two_and_more_takeovers_of_one_stale_lock_exactly_one_wins(
    host: FakeHost, takers: int
) -> None:
    for round_ in range(25):
        shutil.rmtree(lock_dir(host), ignore_errors=True)
        plant_lock(host, deployer="dead-runner", age_s=600)
        won = race_takeovers(host, takers)
        assert len(won) == 1, f"round {round_}: {len(won)} takeovers won"
        assert lock_info(host)["token"] == won[0]
        left = sorted(p.name for p in host.app_root.iterdir())
        assert left == [".deploy.lock", ".deploy.lock.guard"], left


def test_takeover_moves_only_the_lock_judged_stale(host: FakeHost) -> None:
    plant_lock(host, age_s=600)
    held = read_held(host.remote, host.layout)
    assert held is not None and held.lease_age_s >= 600
    info = json.dumps({"token": "ffffffffffffffff"})
    # Its holder renews between the judgement and the takeover: the takeover leaves it.
    age_lease(lock_dir(host), 0)
    out = host.remote.run(take_script(host.layout, "ffffffffffffffff", info, held.key))
    assert out.stdout[0] == "HELD"
    assert lock_info(host)["token"] == "0123456789abcdef"
    # Another deploy's lock replaced it meanwhile: left alone too.
    shutil.rmtree(lock_dir(host))
    plant_lock(host, age_s=600, token="feedfacefeedface")
    out = host.remote.run(take_script(host.layout, "ffffffffffffffff", info, held.key))
    assert out.stdout[0] == "HELD" and lock_info(host)["token"] == "feedfacefeedface"
    # The very lock judged: moved, and taken in the same step.
    again = read_held(host.remote, host.layout)
    assert again is not None
    out = host.remote.run(take_script(host.layout, "ffffffffffffffff", info, again.key))
    assert out.stdout == ["ACQUIRED"] and lock_info(host)["token"] == "ffffffffffffffff"


@pytest.mark.parametrize("other", [424, 42, 4, 4243, 14242])
def test_stopped_deploys_cleanup_releases_only_its_exact_pid(host: FakeHost, other: int) -> None:
    # pid 424's cleanup must not release pid 4242's lock (a prefix), nor 4242 inside 14242.
    token = acquire_lock(host.remote, host.spec("r1", pid=4242))
    assert not release_if_held_by(host.remote, host.layout, other, HERE)
    assert lock_info(host)["token"] == token
    assert release_if_held_by(host.remote, host.layout, 4242, HERE)
    assert not lock_dir(host).exists()


@pytest.mark.parametrize(
    "elsewhere",
    [
        Machine("0" * 32, HERE.boot_id, HERE.pid_ns),
        Machine(HERE.machine_id, "f" * 32, HERE.pid_ns),
        Machine(HERE.machine_id, HERE.boot_id, "pid:[1]"),
    ],
    ids=["machine-id", "boot-id", "pid-namespace"],
)
def test_stopped_deploys_cleanup_leaves_the_same_pid_of_another_machine(
    host: FakeHost, elsewhere: Machine
) -> None:
    # Written as acquire_lock writes it, by pid 4242 of a machine with the same host name.
    token = acquire_lock(host.remote, host.spec("r1", pid=4242, machine=elsewhere))
    assert not release_if_held_by(host.remote, host.layout, 4242, HERE)
    assert lock_info(host)["token"] == token
    assert release_if_held_by(host.remote, host.layout, 4242, elsewhere)  # its own machine's


def test_stopped_deploys_cleanup_on_a_machine_that_cannot_name_itself_releases_nothing(
    host: FakeHost,
) -> None:
    unknown = Machine("", "", "")
    acquire_lock(host.remote, host.spec("r1", pid=4242, machine=unknown))
    assert not release_if_held_by(host.remote, host.layout, 4242, unknown)
    assert lock_dir(host).exists()


def test_lock_released_only_by_its_exact_token(host: FakeHost) -> None:
    spec = host.spec("r1")
    token = acquire_lock(host.remote, spec)
    for part in (token[:8], token[1:], token[:-1]):
        release_lock(host.remote, spec, part)
        assert lock_info(host)["token"] == token
    release_lock(host.remote, spec, token)
    assert not lock_dir(host).exists()


# --- the lease is renewed while the gate works ---------------------------------------------


def test_lease_renewed_by_a_command_when_due_and_not_before(host: FakeHost) -> None:
    spec = host.spec("r1", lock_lease_s=60)  # renewal due every 10 s
    token = acquire_lock(host.remote, spec)
    now = [0.0]
    leased = LeasedRemote(host.remote, spec, token, clock=lambda: now[0])
    age_lease(lock_dir(host), 50)
    now[0] = 9.0
    assert leased.run("echo hi").stdout == ["hi"]
    assert lease_age(host) >= 50  # not due yet: nothing added to the command
    now[0] = 10.5
    out = leased.run("echo hi; echo oops >&2")
    assert (out.ok, out.stdout, out.stderr) == (True, ["hi"], ["oops"])
    assert lease_age(host) < 5
    age_lease(lock_dir(host), 50)
    now[0] = 15.0
    leased.run("true")
    assert lease_age(host) >= 50  # renewed at 10.5: next due at 20.5


def test_health_wait_polling_keeps_the_lease(host: FakeHost) -> None:
    spec = host.spec("r1", lock_lease_s=3)  # due every 0.5 s; the host clock counts whole seconds
    token = acquire_lock(host.remote, spec)
    leased = LeasedRemote(host.remote, spec, token)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # longer than the lease: only renewals keep it
        leased.run("sleep 0.05")
        assert lease_age(host) < 3
    # Another deployer sees a live lease and is refused.
    with pytest.raises(DeployFailed, match="is locked by"):
        acquire_lock(host.remote, host.spec("r2", deployer="other-runner", lock_lease_s=3))


def test_long_command_renews_the_lease_from_the_host(host: FakeHost) -> None:
    spec = host.spec("r1", lock_lease_s=1.2)  # due every 0.2 s
    token = acquire_lock(host.remote, spec)
    leased = LeasedRemote(host.remote, spec, token)
    age_lease(lock_dir(host), 100)
    # One command of 2.5 s (uv sync's stand-in): it says how long it may take.
    out = leased.run(
        f"sleep 2.5; stat -c %Y {lock_dir(host)}/lease; date +%s; exit 3", timeout=3600
    )
    assert not out.ok  # its exit status comes back
    renewed, now = (int(x) for x in out.stdout)
    assert now - renewed <= 1  # renewed while it ran, not only before
    # The host-side loop has ended with the command.
    time.sleep(0.5)
    age_lease(lock_dir(host), 100)
    time.sleep(0.5)
    assert lease_age(host) >= 100


def test_lease_lost_to_a_takeover_stops_the_deploy(host: FakeHost, tmp_path: Path) -> None:
    spec = host.spec("r1", lock_lease_s=60)
    token = acquire_lock(host.remote, spec)
    now = [0.0]
    leased = LeasedRemote(host.remote, spec, token, clock=lambda: now[0])
    # Our lease ran out (the deployer was cut off) and another machine took the lock over.
    age_lease(lock_dir(host), 200)
    theirs = acquire_lock(host.remote, host.spec("r2", deployer="other-runner"))
    now[0] = 100.0
    marker = tmp_path / "ran"
    with pytest.raises(DeployFailed, match="lost the lock") as caught:
        leased.run(f"touch {marker}")
    assert caught.value.phase == "lock"
    assert not marker.exists()  # the command did not run
    with pytest.raises(DeployFailed, match="lost the lock"):
        leased.run(f"touch {marker}")
    assert not marker.exists() and lock_info(host)["token"] == theirs
    release_lock(host.remote, spec, token)  # our release leaves theirs
    assert lock_info(host)["token"] == theirs
