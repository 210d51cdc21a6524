"""A release's model files are the bytes its manifest named, on a sandbox host: r1 ships model
demo-model v1 as file A, r2 ships the same name and version as file B and fails its health gate.
r1's file is A at every moment (checked over and over while r2 fetches, links and fails), after
the switch-back (its restarted app reads A), after r2 is pruned and after a rollback, and
`ai-deploy releases` says so; a path that is a file in one release and a directory in another is
kept apart, never linked inside a directory."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    assert_ok,
    grand_total,
    main_pid,
    run_deploy,
    serving_release,
    start_deploy,
)
from tests.e2e.test_models import DATA, ROOT, STORE, ModelHost, Served, model_host

pytestmark = pytest.mark.e2e

PYTHON = str(REPO / ".venv" / "bin" / "python")
TREE = "models/demo-model"


@pytest.fixture(scope="module")
def mh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelHost]:
    with model_host("models-pin", tmp_path_factory.mktemp("models-pin")) as host:
        yield host


@pytest.fixture(scope="module")
def files(mh: ModelHost) -> tuple[Served, Served]:
    return mh.make_file("pin/a.bin", 6), mh.make_file("pin/b.bin", 5)


def sha_of(mh: ModelHost, path: str) -> str:
    return mh.sh(f"sha256sum {path} 2>&1 || true").split()[0]


def head(mh: ModelHost, served: Served) -> str:
    """What the example app reports for a model file: the sha256 of its first MiB."""
    return mh.sh(f"head -c 1048576 {ROOT}/{served.path} | sha256sum").split()[0]


def releases(mh: ModelHost, *args: str) -> subprocess.CompletedProcess[str]:
    inventory = str(mh.sandbox.inventory)
    done = subprocess.run(
        [PYTHON, "-m", "ai_deploy.cli", "releases", "-i", inventory, *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    return done


def models_of(mh: ModelHost) -> dict[str, list[dict[str, Any]]]:
    [report] = json.loads(releases(mh, "--json").stdout)
    return {r["release"]: r["models"] for r in report["releases"]}


def live(mh: ModelHost, label: str, path: str, served: Served, *data: str) -> Artifact:
    """A release whose model file PATH is SERVED, deployed: its app read SERVED at start."""
    release = mh.release(label, "v1", (path, served, served.sha256))
    assert_ok(run_deploy(mh.sandbox.inventory, release.data, *DATA, *data))
    assert mh.model_file() == {"bytes": served.size, "head": head(mh, served)}
    return release


def test_1_a_release_keeps_its_bytes_when_another_ships_its_name_and_version(
    mh: ModelHost, files: tuple[Served, Served]
) -> None:
    a, b = files
    inventory = mh.sandbox.inventory
    r1 = live(mh, "pin-1", "weights.bin", a)
    r1_file = f"{APP_ROOT}/releases/{r1.release_id}/{TREE}/weights.bin"
    assert sha_of(mh, r1_file) == a.sha256

    r2 = mh.release("pin-2", "v1", ("weights.bin", b, b.sha256), fails=True)
    deploy = start_deploy(inventory, r2.data, *DATA)
    checks: list[tuple[bool, str]] = []  # (r2's file fetched by then, what r1's file hashes to)
    try:
        while deploy.proc.poll() is None:
            fetched = deploy.first(f"models: DONE {b.sha256}") is not None
            checks.append((fetched, sha_of(mh, r1_file)))
    finally:
        if deploy.proc.poll() is None:
            deploy.kill()
    assert deploy.wait() != 0, deploy.output[-3000:]
    assert f"models: DONE {b.sha256} demo-model/v1/weights.bin" in deploy.output
    assert {found for _, found in checks} == {a.sha256}, checks
    assert sum(fetched for fetched, _ in checks) >= 2, checks  # during r2's link, start, gate
    # Switched back: r1 restarted, and its app read A again.
    assert serving_release(mh.sandbox.address) == r1.release_id
    assert sha_of(mh, r1_file) == a.sha256
    assert mh.model_file() == {"bytes": a.size, "head": head(mh, a)}
    found = models_of(mh)
    assert found[r1.release_id] == [
        {"name": "demo-model", "version": "v1", "size_bytes": a.size, "verified": True}
    ]
    assert found[r2.release_id] == [
        {"name": "demo-model", "version": "v1", "size_bytes": b.size, "verified": True}
    ]
    text = releases(mh).stdout
    assert "model demo-model v1, 6.0 MiB, verified" in text, text
    assert "model demo-model v1, 5.0 MiB, verified" in text, text

    # r3 goes live and r2 is pruned (one release kept; r1 stays as previous).
    r3 = live(mh, "pin-3", "weights.bin", b, "releases_keep=1")
    kept = mh.sh(f"ls -1 {APP_ROOT}/releases").split()
    assert sorted(kept) == sorted([r1.release_id, r3.release_id])
    assert sha_of(mh, r1_file) == a.sha256
    blobs = mh.sh(f"ls -1 {STORE}/blobs").split()
    assert a.sha256 in blobs and b.sha256 in blobs
    assert models_of(mh)[r1.release_id][0]["verified"] is True

    # A rollback serves r1 on its own bytes.
    assert_ok(run_deploy(inventory, "rollback=previous", *DATA))
    assert serving_release(mh.sandbox.address) == r1.release_id
    assert mh.model_file() == {"bytes": a.size, "head": head(mh, a)}


def test_2_a_file_in_one_release_and_a_directory_in_another_are_kept_apart(
    mh: ModelHost, files: tuple[Served, Served]
) -> None:
    a, b = files
    r4 = live(mh, "pin-4", "weights.bin/inner.bin", b)
    r5 = live(mh, "pin-5", "weights.bin", a)

    def tree(release: str) -> list[str]:
        where = f"{APP_ROOT}/releases/{release}/{TREE}"
        return sorted(mh.sh(f"find {where} -mindepth 1 -printf '%P %y\\n'").splitlines())

    assert tree(r4.release_id) == ["weights.bin d", "weights.bin/inner.bin l"]
    assert tree(r5.release_id) == ["weights.bin l"]
    r4_file = f"{APP_ROOT}/releases/{r4.release_id}/{TREE}/weights.bin/inner.bin"
    assert sha_of(mh, r4_file) == b.sha256
    assert all(m[0]["verified"] for m in models_of(mh).values())
    # The same release again: nothing changes, nothing restarts.
    pid = main_pid(mh.sandbox)
    again = assert_ok(run_deploy(mh.sandbox.inventory, r5.data, *DATA))
    totals = grand_total(again)
    assert (totals.success, totals.error) == (0, 0), again[-2000:]
    assert main_pid(mh.sandbox) == pid
