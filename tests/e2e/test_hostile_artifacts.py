"""Hostile artifacts against a real sandbox host (issue 10, the first two acceptance lines).

The link chain, a hard link out and a linked uv.lock are refused by the deployer before any
host is touched; a world-writable and a setuid file deploy with their modes normalised; an
artifact above artifact_max_bytes and one that does not fit the disk are refused with their
numbers while the old release keeps serving.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ai_deploy.artifact.build import release_id_from_artifact
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    EXAMPLE,
    Artifact,
    assert_failed,
    assert_ok,
    example_artifact,
    example_members,
    file_member,
    host_snapshot,
    link_member,
    read_host,
    revisions,
    run_deploy,
    serving_release,
    write_tar,
)

pytestmark = pytest.mark.e2e

CANARY = "/root/canary"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def base(sandbox: Sandbox, workdir: Path) -> Artifact:
    """The example app, in service on the module host, and a canary outside the release."""
    art = example_artifact(workdir)
    assert_ok(run_deploy(sandbox.inventory, art.data))
    sandbox.sudo(f"printf 'canary\\n' > {CANARY} && chmod 600 {CANARY}")
    return art


def hard_link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def directory(name: str, mode: int) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


# Each link looks contained on its own; together they climb from the release
# (/app/ai-server/releases/<id>) to /, and REVISION then names /root/canary.
CHAIN = [
    link_member("a/u1", ".."),
    link_member("a/b/u2", "../u1/.."),
    link_member("a/b/c/u3", "../u2/.."),
    link_member("a/b/c/d/u4", "../u3/.."),
    link_member("a/b/c/d/e/u5", "../u4/.."),
    link_member("REVISION", "a/b/c/d/e/u5/root/canary"),
]

REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "link-chain": (
        lambda p: write_tar(p, [*example_members(), *CHAIN]),
        "link 'a/b/u2' -> '../u1/..' points outside the release",
    ),
    "hard-link-out": (
        lambda p: write_tar(
            p, [*example_members(), hard_link("canary", "../../../../root/canary")]
        ),
        "member 'canary' is a hard link (to '../../../../root/canary')",
    ),
    "linked-uv-lock": (
        lambda p: write_tar(
            p,
            [
                *example_members(without=("uv.lock",)),
                file_member("locks/uv.lock", (EXAMPLE / "uv.lock").read_bytes()),
                link_member("uv.lock", "locks/uv.lock"),
            ],
        ),
        "uv.lock is a link (-> 'locks/uv.lock'), not a regular file",
    ),
}


def canary(sandbox: Sandbox) -> str:
    return read_host(sandbox, f"cat {CANARY}; stat -c '%s %Y %a' {CANARY}", "the canary")


@pytest.mark.parametrize("kind", list(REFUSED))
def test_hostile_artifact_is_refused_before_the_host_is_touched(
    sandbox: Sandbox, base: Artifact, workdir: Path, kind: str
) -> None:
    """Acceptance: the chain, the hard link and the linked lock are refused before any host is
    touched (host tree, unit and MainPID unchanged, a canary outside the release unchanged)."""
    make, message = REFUSED[kind]
    path = make(workdir / "bad" / f"ai-server-{kind}.tar.gz")
    before, canary_before = host_snapshot(sandbox), canary(sandbox)
    out = assert_failed(run_deploy(sandbox.inventory, f"artifact={path}"))
    assert "bad artifact" in out and message in out, out
    assert host_snapshot(sandbox) == before
    assert canary(sandbox) == canary_before
    assert serving_release(sandbox.address) == base.release_id


def test_modes_in_the_artifact_are_normalised_on_the_host(
    sandbox: Sandbox, base: Artifact, workdir: Path
) -> None:
    """Acceptance: a world-writable file (and directory) and a setuid file deploy with their
    modes normalised: nothing under the app root the service user could write, no setuid."""
    path = write_tar(
        workdir / "ai-server-modes.tar.gz",
        [
            *example_members(),
            directory("shared", 0o1777),
            file_member("shared/world.py", b"X = 1\n", mode=0o666),
            file_member("helper", b"#!/bin/sh\nid\n", mode=0o4755),
            file_member("group.sh", b"#!/bin/sh\n", mode=0o2775),
        ],
    )
    art = Artifact(path, release_id_from_artifact(path))
    try:
        assert_ok(run_deploy(sandbox.inventory, art.data))
        assert serving_release(sandbox.address) == art.release_id
        found = read_host(
            sandbox,
            f"find {APP_ROOT} ! -type l -perm /022; find {APP_ROOT} ! -type l -perm /7000",
            "writable or setuid files",
        )
        assert found == ""
        release = f"{APP_ROOT}/releases/{art.release_id}"
        modes = read_host(
            sandbox,
            f"cd {release} && stat -c '%n %a %U' shared shared/world.py helper group.sh REVISION",
            "modes",
        ).split("\n")
        assert modes[:5] == [
            "shared 755 root",
            "shared/world.py 644 root",
            "helper 755 root",
            "group.sh 755 root",
            "REVISION 644 root",
        ]
    finally:
        assert_ok(run_deploy(sandbox.inventory, base.data))


def _leftovers(sandbox: Sandbox) -> str:
    return read_host(
        sandbox,
        f"ls -A {APP_ROOT}/.incoming 2>/dev/null; ls -d {APP_ROOT}/releases/.tmp-* 2>/dev/null"
        " || true",
        ".incoming and releases/.tmp-*",
    )


def test_an_artifact_above_the_size_limit_is_refused_with_its_numbers(
    sandbox: Sandbox, base: Artifact, workdir: Path
) -> None:
    """Acceptance: an artifact expanding beyond artifact_max_bytes is refused, naming the
    numbers and the setting, before it is uploaded; the old release serves, nothing is left in
    .incoming/ or releases/."""
    path = write_tar(
        workdir / "ai-server-big.tar.gz",
        [*example_members(), file_member("model.bin", os.urandom(300_000))],
    )
    before = host_snapshot(sandbox)
    out = assert_failed(
        run_deploy(sandbox.inventory, f"artifact={path}", "artifact_max_bytes=200000")
    )
    assert re.search(r"expands to more than 200000 bytes \(at least \d+ bytes", out), out
    assert "artifact_max_bytes=200000" in out
    assert host_snapshot(sandbox) == before  # refused before the upload
    assert _leftovers(sandbox) == ""
    assert serving_release(sandbox.address) == base.release_id


@pytest.fixture
def small_releases_fs(sandbox: Sandbox, base: Artifact) -> Iterator[None]:
    """releases/ on a 1 MiB tmpfs inside the container, holding a copy of what was there."""
    releases = f"{APP_ROOT}/releases"
    keep = "/var/tmp/releases-before-tmpfs"
    sandbox.sudo(
        f"rm -rf {keep} && cp -a {releases} {keep} && "
        f"mount -t tmpfs -o size=1m,mode=755 ai-deploy-test {releases} && "
        f"cp -a {keep}/. {releases}/"
    )
    try:
        yield
    finally:
        sandbox.sudo(f"umount {releases}; rm -rf {keep}")


def test_an_artifact_that_does_not_fit_the_disk_is_refused_with_its_numbers(
    sandbox: Sandbox, base: Artifact, workdir: Path, small_releases_fs: None
) -> None:
    """Acceptance: an artifact that does not fit the disk (a small tmpfs mounted inside the
    container only) is refused with the numbers before extracting; the old release serves,
    nothing is left in .incoming/ or releases/.tmp-*, revisions.log has a line for it."""
    path = write_tar(
        workdir / "ai-server-nospace.tar.gz",
        [*example_members(), file_member("model.bin", os.urandom(2 * 1024 * 1024))],
    )
    lines = len(revisions(sandbox))
    out = assert_failed(run_deploy(sandbox.inventory, f"artifact={path}"))
    found = re.search(
        rf"not enough free space on the filesystem of {APP_ROOT}/releases: (\d+) bytes free, "
        r"(\d+) needed \((\d+) bytes for the release \(expanded\)\)",
        out,
    )
    assert found, out
    free, needed, _ = (int(n) for n in found.groups())
    assert free < 1024 * 1024 < 2 * 1024 * 1024 < needed
    assert _leftovers(sandbox) == ""
    assert serving_release(sandbox.address) == base.release_id
    journal = revisions(sandbox)
    assert len(journal) == lines + 1
    assert journal[-1].split()[1:4] == ["deploy", "nospace", "failed"], journal[-1]
    assert "no-space" in journal[-1]


def test_the_same_release_id_with_other_bytes_is_refused(
    sandbox: Sandbox, base: Artifact, workdir: Path
) -> None:
    """A release id names one build: a second artifact under an id the host already has, with
    other bytes, is refused naming both checksums, and the host is left as it was (never a
    silent "no change")."""
    from ai_deploy.artifact.build import build_artifact, sha256_file
    from tests.e2e.deploykit import copy_example

    first_src = copy_example(workdir / "same-id-a")
    first = build_artifact(first_src, workdir / "dist-same-id-a", artifact_id="same-id")
    assert_ok(run_deploy(sandbox.inventory, f"artifact={first}"))
    assert serving_release(sandbox.address) == "same-id"

    other_src = copy_example(workdir / "same-id-b")
    (other_src / "main.py").write_text((other_src / "main.py").read_text() + "# other bytes\n")
    other = build_artifact(other_src, workdir / "dist-same-id-b", artifact_id="same-id")
    assert sha256_file(other) != sha256_file(first)
    before = host_snapshot(sandbox)
    out = assert_failed(run_deploy(sandbox.inventory, f"artifact={other}"))
    assert "release same-id is on the host from another artifact" in out
    assert sha256_file(first)[:16] in out and sha256_file(other)[:16] in out
    assert "--id" in out
    assert host_snapshot(sandbox) == before
    assert serving_release(sandbox.address) == "same-id"
    # The same bytes again are a no-op, as before.
    assert_ok(run_deploy(sandbox.inventory, f"artifact={first}"))
