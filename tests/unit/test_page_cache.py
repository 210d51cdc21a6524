"""The model files read into the page cache before the switch (ai_deploy.host.page_cache), with
its host-side tool run for real on this machine's filesystem: residency is what mincore says
after the files were evicted with posix_fadvise(DONTNEED), never what the tool claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host import page_cache
from ai_deploy.host.page_cache import Warmed, parse_tool, warm_model_files

pytestmark = pytest.mark.unit

TOOL = Path(page_cache.__file__).with_name("page_cache_tool.py")
MIB = 2**20


def evict(*paths: Path) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def residency(root: Path) -> tuple[int, int, int]:
    """(files, bytes, resident bytes) under ROOT, as the tool's check mode counts them."""
    args = json.dumps({"mode": "check", "margin": 0, "max_s": 0})
    out = subprocess.run(
        [sys.executable, str(TOOL), args, str(root)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "FILES", out
    return int(out[1]), int(out[2]), int(out[3])


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


def release_with_models(host: FakeHost, release: str, sizes: dict[str, int]) -> list[Path]:
    """releases/RELEASE/models/demo/<name> linking to blobs of SIZES bytes, evicted; the first
    file is linked twice (it counts once)."""
    blobs = host.app_root / "models" / "blobs"
    tree = host.app_root / "releases" / release / "models" / "demo"
    tree.mkdir(parents=True)
    blobs.mkdir(parents=True, exist_ok=True)
    made = []
    for name, size in sizes.items():
        blob = blobs / f"sha-{name}"
        blob.write_bytes(os.urandom(size))
        (tree / name).symlink_to(blob)
        made.append(blob)
    (tree / "again").symlink_to(made[0])
    evict(*made)
    return made


def test_cold_files_are_read_into_the_cache_and_the_figures_said(host: FakeHost) -> None:
    release_with_models(host, "r1", {"a.bin": 24 * MIB, "b.bin": 8 * MIB, "empty": 0})
    models = host.app_root / "releases" / "r1" / "models"
    assert residency(models)[2] < MIB  # evicted: the test starts cold
    warmed = warm_model_files(host.remote, host.spec("r1"))
    assert warmed is not None
    assert (warmed.files, warmed.total, warmed.read_files, warmed.read) == (
        3,
        32 * MIB,
        2,
        32 * MIB,
    )
    assert residency(models) == (3, 32 * MIB, 32 * MIB)  # the host's own count, after
    (said,) = [s for s in host.remote.said if s.startswith("page cache:")]
    assert "read 33.6 MB of release r1's model files (3 files, 33.6 MB)" in said, said
    assert "0.0 MB already resident" in said and "MB/s" in said, said


def test_resident_files_are_not_read_again(host: FakeHost) -> None:
    blobs = release_with_models(host, "r1", {"a.bin": 16 * MIB, "b.bin": 4 * MIB})
    blobs[0].read_bytes()  # one file resident already, the other cold
    first = warm_model_files(host.remote, host.spec("r1"))
    assert first is not None and (first.resident, first.read_files, first.read) == (
        16 * MIB,
        1,
        4 * MIB,
    )
    again = warm_model_files(host.remote, host.spec("r1"))
    assert again is not None and (again.read_files, again.read) == (0, 0)
    assert host.remote.said[-1].endswith("are all resident already: nothing read")


def test_files_that_do_not_fit_are_skipped_and_nothing_is_read(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    release_with_models(host, "r1", {"a.bin": 16 * MIB})
    monkeypatch.setattr(page_cache, "MARGIN_BYTES", 2**62)  # more than any host has
    warmed = warm_model_files(host.remote, host.spec("r1"))
    assert warmed is not None and warmed.skipped == 16 * MIB and warmed.read == 0
    assert residency(host.app_root / "releases" / "r1" / "models")[2] < MIB
    assert host.remote.said[-1].startswith("page cache: skipped: release r1's model files")
    assert "the new process reads them from disk" in host.remote.said[-1]


def test_the_setting_off_reads_nothing_and_says_skipped(host: FakeHost) -> None:
    release_with_models(host, "r1", {"a.bin": 16 * MIB})
    assert warm_model_files(host.remote, host.spec("r1", page_cache_warm="false")) is None
    assert residency(host.app_root / "releases" / "r1" / "models")[2] < MIB
    assert host.remote.said == [
        "page cache: skipped (page_cache_warm=false): release r1's model files load from disk"
    ]


def test_a_release_without_model_files_says_nothing(host: FakeHost) -> None:
    (host.app_root / "releases" / "r1").mkdir(parents=True)
    assert warm_model_files(host.remote, host.spec("r1")) is None
    assert warm_model_files(host.remote, host.spec("r1", page_cache_warm=False)) is None
    assert host.remote.said == [] and host.remote.warned == []


def test_a_deploy_warms_before_the_strategy_switches(host: FakeHost) -> None:
    assert host.deploy("r1").status == "served"
    said = host.remote.said
    assert not any(s.startswith("page cache:") for s in said)  # no model files: no line


@pytest.mark.parametrize(
    "lines",
    [[], ["FILES 1 2"], ["FILES a b c"], ["garbage"], ["FILES 1 2 3", "READ x 1 2 0"], ["SKIP"]],
)
def test_output_that_is_not_the_tools_is_not_a_result(lines: list[str]) -> None:
    assert parse_tool(lines) is None


def test_the_stopped_read_says_the_rest_loads_from_disk() -> None:
    warmed = Warmed(1, 10**9, 0, read_files=1, read=10**8, seconds=2.0, stopped=True)
    assert warmed.message("r1").endswith("(50 MB/s) (stopped at 1200 s: the rest loads from disk)")
