"""Venvs built by the build user aside and polled, recorded, verified against their manifest,
and rebuilt when damaged (on a deploy and before a switch-back), through their real shell on a
temporary tree (tests/unit/hostkit.py). Here the build user is this user, so the build runs
without runuser; one test switches to `nobody` with runuser when run as root."""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.gate import put_in_service
from ai_deploy.host.outcome import SERVED, SWITCHED_BACK, DeployFailed
from ai_deploy.host.paths import VENV_COMPLETE
from ai_deploy.host.release import venv as venv_mod
from ai_deploy.host.release.venv import (
    VENV_MANIFEST,
    VENV_RECORD,
    ensure_release_venv,
    verify_venv,
)
from ai_deploy.host.remote import Result

pytestmark = pytest.mark.unit


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


def lock_hash(lock: str = "lock-v1") -> str:
    return hashlib.sha256(f"version = 1\n# {lock}\n".encode()).hexdigest()


def venv_dir(host: FakeHost, lock: str = "lock-v1") -> Path:
    return host.app_root / "venvs" / lock_hash(lock)


def record(venv: Path) -> dict[str, str]:
    lines = (venv / VENV_RECORD).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def venvs_listing(host: FakeHost) -> list[str]:
    return sorted(p.name for p in (host.app_root / "venvs").iterdir())


# --- a build ---


def test_build_runs_as_the_build_user_aside_and_is_recorded_and_renamed(host: FakeHost) -> None:
    assert host.deploy("r1").status == SERVED
    venv = venv_dir(host)
    assert venvs_listing(host) == [lock_hash()]  # nothing aside left: no .build-*, log, pid
    rec = record(venv)
    assert rec["lock"] == lock_hash()
    assert rec["built_by"] == getpass.getuser()  # owner of what uv wrote, before the chown
    assert rec["uv"] == "uv 0.13.9 (stand-in)"
    assert rec["python"] == f"{host.bin / 'python3'} Python {platform.python_version()}"
    listing = (venv / VENV_MANIFEST).read_text()
    assert hashlib.sha256(listing.encode()).hexdigest() == rec["manifest"]
    assert int(rec["files"]) == len(listing.splitlines()) > 0
    assert "bin/uvicorn f 755 0:0 " in listing and VENV_COMPLETE not in listing
    # Root's and read-only for others (uv's world-writable .lock included).
    for path in [venv, *venv.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path
        assert stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o022, path
    # uv venv --relocatable, then uv sync, both with the build user's cache (0700) as HOME.
    cache = host.tmp / "uv-cache"
    (made,) = (host.state / "venv.log").read_text().splitlines()
    assert f"HOME={cache} UV_CACHE_DIR={cache} venv --relocatable" in made
    assert "/venvs/.build-" in made  # built aside, then renamed
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (sync,) = host.uv_calls()
    assert "/releases/.tmp-r1-" in sync and "sync --frozen" in sync
    assert verify_venv(host.remote, host.spec("r1"), lock_hash()).ok


def test_build_is_polled_with_short_commands_and_says_how_it_goes(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(venv_mod, "SAY_EVERY_S", 0.2)
    (host.state / "uv.sleep").write_text("1.5\n")
    runs: list[float] = []
    run = host.remote.run

    def timed(script: str, *, timeout: float | None = None) -> Result:
        started = time.monotonic()
        result = run(script, timeout=timeout)
        runs.append(time.monotonic() - started)
        return result

    monkeypatch.setattr(host.remote, "run", timed)
    started = time.monotonic()
    assert host.deploy("r1").status == SERVED
    assert time.monotonic() - started >= 1.5
    assert max(runs) < 1.0  # no command waits for the build: a lease can be renewed between
    polls = [s for s in host.remote.scripts if "echo running" in s]
    assert len(polls) >= 3
    assert any("uv sync running for" in m for m in host.remote.said), host.remote.said


def test_build_as_another_user_uses_runuser_and_ends_root_owned() -> None:
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("switching to another user needs root and runuser")
    # A tree `nobody` can walk (pytest's own tmp is 0700).
    tmp = Path(tempfile.mkdtemp(prefix="venv-nobody-"))
    try:
        tmp.chmod(0o755)
        with FakeHost(tmp) as host:
            host.state.chmod(0o777)
            outcome = host.deploy("r1", build_user="nobody")
            assert outcome.status == SERVED, outcome.reason
            (made,) = (host.state / "venv.log").read_text().splitlines()
            assert made.startswith("nobody ")  # uv ran as nobody
            venv = venv_dir(host)
            assert record(venv)["built_by"] == "nobody"
            assert all(p.lstat().st_uid == 0 for p in [venv, *venv.rglob("*")])
            cache = host.tmp / "uv-cache"
            assert cache.stat().st_uid == int(
                subprocess.check_output(["id", "-u", "nobody"], text=True)
            )
    finally:
        shutil.rmtree(tmp)


def test_build_user_that_cannot_read_the_release_fails_clearly() -> None:
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("switching to another user needs root and runuser")
    tmp = Path(tempfile.mkdtemp(prefix="venv-nobody-"))
    try:
        tmp.chmod(0o755)
        with FakeHost(tmp) as host:
            (tmp / "app").mkdir(mode=0o700)  # the release is out of nobody's reach
            outcome = host.deploy("r1", build_user="nobody")
            assert (outcome.phase, outcome.serving) == ("venv", None)
            assert "nobody cannot read uv.lock" in outcome.reason
            assert [p.name for p in (tmp / "app" / "venvs").iterdir()] == []
    finally:
        shutil.rmtree(tmp)


def test_a_bad_build_user_name_is_refused(host: FakeHost) -> None:
    outcome = host.deploy("r1", build_user="x; rm -rf /")
    assert outcome.phase == "venv" and "not a valid user name" in outcome.reason
    assert host.uv_calls() == []


def test_an_interrupted_build_is_stopped_and_removed_by_the_next(host: FakeHost) -> None:
    venvs = host.app_root / "venvs"
    venvs.mkdir(parents=True)
    (venvs / ".build-old-0000").mkdir()
    stale = subprocess.Popen(["setsid", "sleep", "300"])  # a build left behind by a dead deploy
    try:
        (venvs / ".build-old-0000.pid").write_text(f"{stale.pid}\n")
        assert host.deploy("r1").status == SERVED
        assert stale.wait(timeout=5) == -9
        assert venvs_listing(host) == [lock_hash()]
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


# --- verification and rebuilds ---


def _delete_file(venv: Path, host: FakeHost) -> str:
    (venv / "bin" / "uvicorn").unlink()
    return "bin/uvicorn"


def _change_file(venv: Path, host: FakeHost) -> str:
    path = venv / "bin" / "uvicorn"
    path.chmod(0o755)
    path.write_bytes(path.read_bytes() + b"# changed\n")
    return "bin/uvicorn"


def _add_file(venv: Path, host: FakeHost) -> str:
    (venv / "bin" / "intruder").write_text("x")
    return "bin/intruder"


def _chmod_file(venv: Path, host: FakeHost) -> str:
    (venv / "bin" / "uvicorn").chmod(0o777)
    return "bin/uvicorn"


def _drop_marker(venv: Path, host: FakeHost) -> str:
    (venv / VENV_COMPLETE).unlink()
    return "completion marker is missing"


def _drop_record(venv: Path, host: FakeHost) -> str:
    (venv / VENV_RECORD).unlink()
    return "no build record"


def _other_uv(venv: Path, host: FakeHost) -> str:
    (host.state / "uv.version").write_text("uv 0.14.0 (stand-in)\n")
    return "uv is now 'uv 0.14.0 (stand-in)'"


def _other_python(venv: Path, host: FakeHost) -> str:
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to("/nonexistent/python3")
    return "its Python is now ''"


DAMAGE = {
    "file-deleted": _delete_file,
    "file-changed": _change_file,
    "file-added": _add_file,
    "mode-changed": _chmod_file,
    "marker-missing": _drop_marker,
    "record-missing": _drop_record,
    "uv-changed": _other_uv,
    "python-changed": _other_python,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_venv_is_named_then_rebuilt_and_swapped_in(
    host: FakeHost, damage: Callable[[Path, FakeHost], str]
) -> None:
    assert host.deploy("r1").status == SERVED
    venv = venv_dir(host)
    what = damage(venv, host)
    check = verify_venv(host.remote, host.spec("r1"), lock_hash())
    assert not check.ok and check.exists and what in check.reason, check
    # The same deploy again rebuilds it aside and swaps it in: the path never goes away.
    outcome = host.deploy("r1")
    assert outcome.status == SERVED, outcome.reason
    assert any("is damaged" in m and what in m for m in host.remote.warned), host.remote.warned
    assert len(host.uv_calls()) == 2
    assert verify_venv(host.remote, host.spec("r1"), lock_hash()).ok
    assert venvs_listing(host) == [lock_hash()]
    assert host.get() == (200, "release r1")


def test_the_tree_fact_reports_a_damaged_venv_so_the_deploy_is_not_a_no_op(
    host: FakeHost,
) -> None:
    host.deploy("r1")
    assert host.tree().venv_ready("r1")
    (venv_dir(host) / "bin" / "uvicorn").unlink()
    tree = host.tree()
    assert not tree.venv_ready("r1")
    assert tree.damaged_venvs == [lock_hash()] and tree.venvs == []
    host.deploy("r1")
    tree = host.tree()
    assert tree.venv_ready("r1") and tree.damaged_venvs == []


def test_a_venv_built_before_records_is_ready_for_the_fact_but_rebuilt_by_the_gate(
    host: FakeHost,
) -> None:
    host.deploy("r1")
    venv = venv_dir(host)
    (venv / VENV_RECORD).unlink()
    (venv / VENV_MANIFEST).unlink()
    assert host.tree().venv_ready("r1")  # an older deploy's venv: no manifest to check
    host.deploy("r1")
    assert len(host.uv_calls()) == 2 and (venv / VENV_RECORD).exists()


def test_a_failed_rebuild_leaves_the_damaged_venv_where_kept_releases_find_it(
    host: FakeHost,
) -> None:
    host.deploy("r1")
    venv = venv_dir(host)
    (venv / "bin" / "intruder").write_text("x")
    (host.state / "uv.fail").touch()
    outcome = host.deploy("r1")
    assert outcome.phase == "venv" and "uv sync --frozen failed" in outcome.reason
    assert (venv / "bin" / "uvicorn").exists() and (venv / VENV_RECORD).exists()
    assert venvs_listing(host) == [lock_hash()]  # the build aside is gone, the venv is not
    assert os.readlink(host.app_root / "releases" / "r1" / ".venv").endswith(lock_hash())


def test_ensure_release_venv_reads_the_release_link(host: FakeHost) -> None:
    host.deploy("r1")
    (venv_dir(host) / "bin" / "uvicorn").unlink()
    ensure_release_venv(host.remote, host.spec("r1"), "r1")
    assert (venv_dir(host) / "bin" / "uvicorn").exists()
    (host.app_root / "releases" / "r1" / ".venv").unlink()
    with pytest.raises(DeployFailed, match=r"has no \.venv link"):
        ensure_release_venv(host.remote, host.spec("r1"), "r1")


# --- switch-back onto a verified venv ---


@pytest.mark.parametrize("strategy", ["socket", "restart", "bluegreen"])
def test_switch_back_rebuilds_the_previous_release_damaged_venv_first(
    host: FakeHost, strategy: str
) -> None:
    assert host.deploy("r1", strategy=strategy).status == SERVED
    (venv_dir(host) / "bin" / "uvicorn").unlink()  # r1 would crash on its next start
    outcome = host.deploy("r2", strategy=strategy, lock="lock-v2", behaviour="crash")
    assert outcome.status == SWITCHED_BACK, outcome.reason
    assert outcome.serving == "r1"
    assert (venv_dir(host) / "bin" / "uvicorn").exists()
    assert verify_venv(host.remote, host.spec("r1"), lock_hash()).ok
    assert host.get() == (200, "release r1")
    assert len(host.uv_calls()) == 3  # r1, r2, then r1's again


def test_switch_back_whose_venv_cannot_be_rebuilt_says_so(host: FakeHost) -> None:
    host.deploy("r1")
    (venv_dir(host) / "bin" / "uvicorn").unlink()
    art, sha = host.artifact("r2", lock="lock-v2", behaviour="crash")
    spec = host.spec("r2", artifact_remote=art, artifact_sha256=sha, deploy_strategy="socket")
    # r2's own venv builds, r1's rebuild fails.
    calls = {"n": 0}
    run = host.remote.run

    def failing_second_sync(script: str, *, timeout: float | None = None) -> Result:
        if "setsid sh -c" in script:
            calls["n"] += 1
            if calls["n"] == 2:
                (host.state / "uv.fail").touch()
        return run(script, timeout=timeout)

    host.remote.run = failing_second_sync  # type: ignore[method-assign]
    outcome = put_in_service(host.remote, spec, host="h1", have_release=False)
    assert outcome.phase == "rollback", outcome.reason
    assert "venv of the previous release r1 could not be rebuilt" in outcome.reason
