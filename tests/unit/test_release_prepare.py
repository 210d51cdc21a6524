"""releases/<id> made ready (prepare), `current`/`previous` switched (links) and old releases
pruned, each through its real shell on a temporary tree."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.gate import put_in_service
from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import VENV_COMPLETE
from ai_deploy.host.release.extract import Extracted, extract_artifact
from ai_deploy.host.release.links import Links, read_links, set_links
from ai_deploy.host.release.prepare import prepare_release
from ai_deploy.host.release.prune import prune

pytestmark = pytest.mark.unit

TOKEN = "a1b2c3d4e5f60718"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


def prepare(host: FakeHost, release_id: str, **artifact: object) -> None:
    art, sha = host.artifact(release_id, **artifact)  # type: ignore[arg-type]
    spec = host.spec(release_id, artifact_remote=art, artifact_sha256=sha)
    prepare_release(host.remote, spec, TOKEN, have_release=False)


def releases(host: FakeHost) -> list[str]:
    d = host.app_root / "releases"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def lock_hash(lock: str) -> str:
    return hashlib.sha256(f"version = 1\n# {lock}\n".encode()).hexdigest()


# --- prepare ---


def test_prepare_extracts_into_a_fresh_dir_renamed_into_place(host: FakeHost) -> None:
    art, sha = host.artifact("r1")
    spec = host.spec("r1", artifact_remote=art, artifact_sha256=sha)
    prepare_release(host.remote, spec, TOKEN, have_release=False)
    release = host.app_root / "releases" / "r1"
    assert releases(host) == ["r1"]  # no .tmp-* beside it
    assert (release / "REVISION").read_text() == "r1\n"
    assert (release / "main.py").read_text() == "app = None\n"
    assert release.stat().st_mode & 0o777 == 0o755
    assert (release / "main.py").stat().st_uid == os.getuid()  # code_owner: this user
    assert not Path(art).exists()  # the upload is removed once the release is in place
    # The extraction happened aside and one rename put it in place.
    assert any(f"mv -T {host.app_root}/releases/.tmp-r1-{TOKEN}" in s for s in host.remote.scripts)


def test_prepare_builds_the_venv_once_then_reuses_it(host: FakeHost) -> None:
    prepare(host, "r1", lock="lock-v1")
    prepare(host, "r2", lock="lock-v1")
    v1 = lock_hash("lock-v1")
    assert len(host.uv_calls()) == 1
    assert "UV_PYTHON_DOWNLOADS=never sync --frozen" in host.uv_calls()[0]
    for rid in ("r1", "r2"):
        link = host.app_root / "releases" / rid / ".venv"
        assert os.readlink(link) == f"../../venvs/{v1}"
        assert (link / VENV_COMPLETE).exists()
    venv = host.app_root / "venvs" / v1
    writable = [p for p in venv.rglob("*") if p.stat().st_mode & 0o022]
    assert writable == []  # the service cannot rewrite its own venv (uv's .lock included)
    assert any("is ready (uv.lock unchanged): no sync" in m for m in host.remote.said)
    prepare(host, "r3", lock="lock-v2")  # a new uv.lock: a second venv
    assert len(host.uv_calls()) == 2
    assert sorted(p.name for p in (host.app_root / "venvs").iterdir()) == sorted(
        [v1, lock_hash("lock-v2")]
    )


def test_prepare_refuses_an_artifact_whose_sha256_does_not_match(host: FakeHost) -> None:
    art, _ = host.artifact("r1")
    spec = host.spec("r1", artifact_remote=art, artifact_sha256="0" * 64)
    with pytest.raises(DeployFailed, match="does not match sha256") as caught:
        prepare_release(host.remote, spec, TOKEN, have_release=False)
    assert caught.value.phase == "release"
    assert releases(host) == []
    assert host.uv_calls() == []


def test_prepare_of_a_corrupt_artifact_leaves_nothing_in_releases(host: FakeHost) -> None:
    bad = host.uploads / "r1.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    spec = host.spec("r1", artifact_remote=str(bad), artifact_sha256=sha)
    with pytest.raises(DeployFailed, match="extracting the artifact failed"):
        prepare_release(host.remote, spec, TOKEN, have_release=False)
    assert releases(host) == []


def test_prepare_keeps_members_with_dotdot_inside_the_release(host: FakeHost) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("uv.lock", b"version = 1\n"), ("../../escape", b"out\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    art = host.uploads / "r1.tar.gz"
    art.write_bytes(buf.getvalue())
    spec = host.spec(
        "r1", artifact_remote=str(art), artifact_sha256=hashlib.sha256(buf.getvalue()).hexdigest()
    )
    # Refusing the artifact is fine too; writing outside the release is not.
    with contextlib.suppress(DeployFailed):
        prepare_release(host.remote, spec, TOKEN, have_release=False)
    assert not (host.app_root / "escape").exists()
    assert not (host.app_root / "releases" / "escape").exists()
    assert not (host.tmp / "escape").exists()


def test_prepare_venv_failure_leaves_the_tree_as_it_was(host: FakeHost) -> None:
    (host.state / "uv.fail").touch()
    with pytest.raises(DeployFailed, match="uv sync --frozen failed") as caught:
        prepare(host, "r1")
    assert caught.value.phase == "venv"
    assert "Failed to download `torch==2.9.0`" in str(caught.value)
    assert releases(host) == []
    venvs = host.app_root / "venvs"
    assert not venvs.exists() or list(venvs.iterdir()) == []


def test_prepare_of_a_release_on_the_host_relinks_its_venv_without_sync(host: FakeHost) -> None:
    prepare(host, "r1")
    venv_link = host.app_root / "releases" / "r1" / ".venv"
    venv_link.unlink()
    spec = host.spec("r1")
    prepare_release(host.remote, spec, TOKEN, have_release=True)
    assert os.readlink(venv_link) == f"../../venvs/{lock_hash('lock-v1')}"
    assert len(host.uv_calls()) == 1


def test_prepare_of_a_missing_release_without_an_artifact_is_refused(host: FakeHost) -> None:
    with pytest.raises(DeployFailed, match="release r7 is not on the host"):
        prepare_release(host.remote, host.spec("r7"), TOKEN, have_release=False)


# --- links ---


def test_links_after_switch_to() -> None:
    ok = frozenset({"r1", "r2", "r3"})
    assert Links(None, None, ok).after_switch_to("r1") == Links("r1", None, ok)
    assert Links("r1", None, ok).after_switch_to("r2") == Links("r2", "r1", ok)
    assert Links("r2", "r1", ok).after_switch_to("r3") == Links("r3", "r2", ok)
    # The same release again: previous stays what it was (not current itself).
    assert Links("r2", "r1", ok).after_switch_to("r2") == Links("r2", "r1", ok)
    # A rollback to previous swaps the two.
    assert Links("r2", "r1", ok).after_switch_to("r1") == Links("r1", "r2", ok)


def test_previous_only_ever_names_a_release_that_passed_the_gate() -> None:
    # r2 is current but never passed the gate (an interrupted deploy): it never becomes
    # previous; the healthy previous stays.
    only_r1 = frozenset({"r1"})
    assert Links("r2", "r1", only_r1).after_switch_to("r3") == Links("r3", "r1", only_r1)
    assert Links("r2", None, frozenset()).after_switch_to("r3") == Links("r3", None, frozenset())
    assert Links("r2", "r9", only_r1).after_switch_to("r3") == Links("r3", None, only_r1)


def test_switch_back_goes_to_the_newest_release_that_passed_the_gate() -> None:
    ok = frozenset({"r1", "r2"})
    assert Links("r2", "r1", ok).switch_back("r3") == Links("r2", "r1", ok)
    # An interrupted deploy left r3 current: switching back from r3 means r2... or r1.
    assert Links("r3", "r2", ok).switch_back("r3") == Links("r2", None, ok)
    assert Links("r3", "r2", frozenset({"r2"})).switch_back("r4") == Links(
        "r2", None, frozenset({"r2"})
    )
    assert Links("r3", None, ok).switch_back("r3") is None
    assert Links(None, None).switch_back("r1") is None


def test_links_switch_current_and_previous(host: FakeHost) -> None:
    spec = host.spec()
    assert read_links(host.remote, spec) == Links(None, None)
    (host.app_root / "releases").mkdir(parents=True)
    set_links(host.remote, spec, Links("r1", None))
    assert read_links(host.remote, spec) == Links("r1", None)
    (host.app_root / "healthy").mkdir()
    (host.app_root / "healthy" / "r1").write_text("- 2026-11-29T00:00:00Z\n")
    set_links(host.remote, spec, read_links(host.remote, spec).after_switch_to("r2"))
    assert read_links(host.remote, spec) == Links("r2", "r1", frozenset({"r1"}))
    assert os.readlink(host.app_root / "current") == "releases/r2"  # relative
    set_links(host.remote, spec, Links(None, "r1"))
    assert read_links(host.remote, spec) == Links(None, "r1", frozenset({"r1"}))
    assert not (host.app_root / "current").is_symlink()
    assert sorted(p.name for p in host.app_root.iterdir()) == ["healthy", "previous", "releases"]


def test_links_refuse_to_replace_a_real_current_directory(host: FakeHost) -> None:
    current = host.app_root / "current"
    current.mkdir(parents=True)
    (current / "main.py").write_text("hand-copied\n")
    with pytest.raises(DeployFailed, match="could not switch") as caught:
        set_links(host.remote, host.spec(), Links("r1", None))
    assert caught.value.phase == "switch"
    assert (current / "main.py").read_text() == "hand-copied\n"


# --- prune ---


def make_release(host: FakeHost, rid: str, venv: str, age_s: float) -> None:
    release = host.app_root / "releases" / rid
    release.mkdir(parents=True)
    (host.app_root / "venvs" / venv).mkdir(parents=True, exist_ok=True)
    (release / ".venv").symlink_to(f"../../venvs/{venv}")
    when = time.time() - age_s
    os.utime(release, (when, when))


def test_prune_never_removes_current_or_previous_and_drops_unused_venvs(
    host: FakeHost,
) -> None:
    # Oldest first: r1 is current (a rollback to it), r2 previous; keep only 2.
    for age, (rid, venv) in enumerate(
        [("r5", "v-new"), ("r4", "v-new"), ("r3", "v-r3"), ("r2", "v-old"), ("r1", "v-r1")]
    ):
        make_release(host, rid, venv, age_s=100 * (age + 1))
    (host.app_root / "venvs" / "v-orphan").mkdir()
    (host.app_root / "releases" / f".tmp-r6-{TOKEN}").mkdir()
    (host.app_root / "current").symlink_to("releases/r1")
    (host.app_root / "previous").symlink_to("releases/r2")
    prune(host.remote, host.spec(releases_keep=2))
    assert releases(host) == ["r1", "r2", "r4", "r5"]
    venvs = sorted(p.name for p in (host.app_root / "venvs").iterdir())
    assert venvs == ["v-new", "v-old", "v-r1"]
    assert "removed release r3" in host.remote.said
    assert "removed venv v-orphan" in host.remote.said


def test_prune_on_a_fresh_host_does_nothing(host: FakeHost) -> None:
    prune(host.remote, host.spec())
    assert not host.app_root.exists() or list(host.app_root.iterdir()) == []
    assert host.remote.said == []


# --- the host's extractor: hostile artifacts, modes, limits, free space (issue 10) ----------

Member = tuple[tarfile.TarInfo, bytes | None]
APP = {"main.py": b"app = None\n", "uv.lock": b"version = 1\n# lock-v1\n"}


def reg(name: str, data: bytes = b"x\n", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def sym(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def upload(host: FakeHost, members: list[Member], *, base: bool = True) -> tuple[str, str]:
    """An uploaded artifact holding MEMBERS as given (after a good app's files when BASE),
    never seen by the deployer's check: its path on the host and its sha256."""
    if base:
        members = [reg(n, d) for n, d in APP.items()] + members
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    path = host.uploads / f"hostile-{len(list(host.uploads.iterdir()))}.tar.gz"
    path.write_bytes(buf.getvalue())
    return str(path), hashlib.sha256(buf.getvalue()).hexdigest()


def extract(host: FakeHost, members: list[Member], **settings: object) -> tuple[Extracted, Path]:
    art, sha = upload(host, members)
    spec = host.spec("r1", artifact_remote=art, artifact_sha256=sha, **settings)
    tmp = host.app_root / "releases" / f".tmp-r1-{TOKEN}"
    return extract_artifact(host.remote, spec, art, str(tmp)), tmp


def refused(host: FakeHost, members: list[Member], **settings: object) -> DeployFailed:
    """Put the artifact through prepare, then through the whole gate (lock, prepare, journal):
    refused both times, with nothing of it left on the host (no releases/.tmp-*, no upload)
    and a revisions.log line for the failure."""
    art, sha = upload(host, members)
    data = Path(art).read_bytes()
    spec = host.spec("r1", artifact_remote=art, artifact_sha256=sha, **settings)
    with pytest.raises(DeployFailed) as caught:
        prepare_release(host.remote, spec, TOKEN, have_release=False)
    assert caught.value.phase == "release"
    assert caught.value.journal
    assert releases(host) == []
    assert not Path(art).exists()
    Path(art).write_bytes(data)  # uploaded again
    outcome = put_in_service(host.remote, spec, host="h1", have_release=False)
    assert (outcome.status, outcome.phase) == ("failed", "release")
    assert outcome.reason[:60] == str(caught.value)[:60]  # (free bytes may differ)
    assert releases(host) == []
    assert not Path(art).exists()
    assert host.journal()[-1].split()[1:4] == ["deploy", "r1", "failed"]
    return caught.value


CHAIN_TO_CANARY = [
    sym("a/u1", ".."),  # the release
    sym("a/b/u2", "../u1/.."),  # releases/
    sym("a/b/c/u3", "../u2/.."),  # the app root
    sym("a/b/c/d/u4", "../u3/.."),  # the test's temporary directory, where the canary is
    sym("REVISION", "a/b/c/d/u4/canary"),
]


def test_the_link_chain_is_refused_on_the_host_without_the_deployer_check(
    host: FakeHost,
) -> None:
    canary = host.tmp / "canary"
    canary.write_text("canary\n")
    failed = refused(host, CHAIN_TO_CANARY)
    assert "refused on the host" in str(failed)
    assert "link 'a/b/u2' -> '../u1/..' resolves outside the release" in str(failed)
    assert "artifact-refused" in host.journal()[-1]
    assert canary.read_text() == "canary\n"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([sym("passwd", "../../../etc/passwd", tarfile.LNKTYPE)], "'passwd' is a hard link"),
        ([sym("data", "/etc")], "'data' points to the absolute path '/etc'"),
        ([sym("sub", "."), reg("sub/x.py")], "member 'sub/x.py' passes through the link 'sub'"),
        ([sym("l", "x/y/../.."), sym("x", "z/..")], "through a later link"),
        ([sym("pipe", "", tarfile.FIFOTYPE)], "'pipe' is a device, fifo"),
        ([reg("pkg/a.py"), reg("pkg")], "'pkg' appears again and changes its type"),
        ([reg("../../escape")], "'../../escape' contains '..'"),
        ([sym(".venv", "a")], "'.venv' is made by the deploy"),
    ],
    ids=["hard-link", "absolute", "through-link", "later-link", "fifo", "type", "dotdot", "venv"],
)
def test_hostile_members_are_refused_on_the_host(
    host: FakeHost, members: list[Member], message: str
) -> None:
    assert message in str(refused(host, members))


def test_a_linked_uv_lock_is_refused_on_the_host(host: FakeHost) -> None:
    members = [reg("main.py"), reg("real.lock", b"version = 1\n"), sym("uv.lock", "real.lock")]
    art, sha = upload(host, members, base=False)
    spec = host.spec("r1", artifact_remote=art, artifact_sha256=sha)
    with pytest.raises(DeployFailed, match=r"uv\.lock is not a regular file"):
        prepare_release(host.remote, spec, TOKEN, have_release=False)
    assert releases(host) == [] and host.uv_calls() == []


def test_modes_are_set_by_the_extractor_not_the_artifact(host: FakeHost) -> None:
    dirs = [tarfile.TarInfo("open"), tarfile.TarInfo("sticky")]
    for info, mode in zip(dirs, (0o777, 0o1777), strict=True):
        info.type, info.mode = tarfile.DIRTYPE, mode
    done, tmp = extract(
        host,
        [
            (dirs[0], None),
            (dirs[1], None),
            reg("open/world.py", mode=0o666),
            reg("setuid", mode=0o4755),
            reg("setgid.sh", mode=0o2750),
            reg("private.txt", mode=0o600),
            reg("implicit/dir/x.py", mode=0o664),
        ],
    )
    assert done.ok, done
    modes = {str(p.relative_to(tmp)): p.lstat().st_mode & 0o7777 for p in [tmp, *tmp.rglob("*")]}
    assert modes == {
        ".": 0o755,
        "open": 0o755,
        "sticky": 0o755,
        "implicit": 0o755,
        "implicit/dir": 0o755,
        "open/world.py": 0o644,
        "setuid": 0o755,
        "setgid.sh": 0o755,
        "private.txt": 0o644,
        "implicit/dir/x.py": 0o644,
        "main.py": 0o644,
        "uv.lock": 0o644,
        "REVISION": 0o644,
        ".artifact-sha256": 0o644,
    }
    assert {p.lstat().st_uid for p in [tmp, *tmp.rglob("*")]} == {os.getuid()}
    assert done.lock_hash == hashlib.sha256(APP["uv.lock"]).hexdigest()


def test_revision_written_as_a_link_in_the_artifact_never_follows_it(host: FakeHost) -> None:
    done, tmp = extract(host, [sym("REVISION", "main.py"), sym(".artifact-sha256", "uv.lock")])
    assert done.ok, done
    for name in ("REVISION", ".artifact-sha256"):
        assert not (tmp / name).is_symlink() and (tmp / name).is_file()
    assert (tmp / "REVISION").read_text() == "r1\n"
    assert (tmp / "main.py").read_bytes() == APP["main.py"]
    assert (tmp / "uv.lock").read_bytes() == APP["uv.lock"]


def test_links_inside_the_release_are_kept(host: FakeHost) -> None:
    done, tmp = extract(host, [sym("sub/up", ".."), sym("alias.py", "sub/up/main.py")])
    assert done.ok, done
    assert os.readlink(tmp / "alias.py") == "sub/up/main.py"
    assert (tmp / "alias.py").read_bytes() == APP["main.py"]


@pytest.mark.parametrize(
    ("members", "settings", "message"),
    [
        (
            [reg("model.bin", os.urandom(300_000))],
            {"artifact_max_bytes": 200_000},
            "expands to more than 200000 bytes",
        ),
        (
            [reg(f"m{i}.py") for i in range(20)],
            {"artifact_max_members": 10},
            "more than 10 members (artifact_max_members=10)",
        ),
        (
            [reg("zeros", bytes(2_000_000))],
            {"artifact_max_ratio": 100},
            "ratio above artifact_max_ratio=100",
        ),
    ],
    ids=["bytes", "members", "ratio"],
)
def test_limits_are_enforced_on_the_host(
    host: FakeHost, members: list[Member], settings: dict[str, object], message: str
) -> None:
    failed = refused(host, members, **settings)
    assert message in str(failed)
    assert "artifact-too-big" in host.journal()[-1]


def test_no_room_for_the_release_and_its_venv_is_refused_with_the_numbers(
    host: FakeHost,
) -> None:
    failed = refused(host, [], venv_space_bytes=10**18)
    message = str(failed)
    assert "not enough free space on the filesystem of" in message
    assert "1000000000000000000 bytes for its new venv (venv_space_bytes)" in message
    assert re.search(r": \d+ bytes free, \d+ needed \(\d+ bytes for the release", message)
    assert "no-space" in host.journal()[-1]


def test_no_venv_space_is_needed_when_the_venv_for_the_lock_exists(host: FakeHost) -> None:
    venv = host.app_root / "venvs" / hashlib.sha256(APP["uv.lock"]).hexdigest()
    venv.mkdir(parents=True)
    (venv / VENV_COMPLETE).touch()
    done, _ = extract(host, [], venv_space_bytes=10**18)
    assert done.ok, done
