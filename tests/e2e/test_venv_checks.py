"""Venvs on a real host: built by the build user (never root), owned by root afterwards, checked
against their manifest before a release goes live, and rebuilt when damaged, on a plain deploy
and before a switch-back."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from ai_deploy.host.release.venv import verify_venv
from ai_deploy.host.remote import Result
from ai_deploy.host.settings import Spec
from ai_deploy.project import group_data_defaults
from testkit.variants import crash_at_import
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    Artifact,
    assert_failed,
    assert_ok,
    build_variant,
    example_artifact,
    grand_total,
    read_host,
    relock_on_host,
    revisions,
    run_deploy,
    serving_release,
)

pytestmark = pytest.mark.e2e

BUILD_USER = "ai-server-build"  # derived from app_name
CACHE = f"/var/cache/ai-deploy/uv-{BUILD_USER}"
# A module the example app needs at import time: without it the app cannot start.
VICTIM = "fastapi/routing.py"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("venv-checks")


@pytest.fixture(scope="module")
def base(workdir: Path) -> Artifact:
    return example_artifact(workdir)


@pytest.fixture(scope="module")
def first_deploy(sandbox: Sandbox, base: Artifact) -> str:
    return assert_ok(run_deploy(sandbox.inventory, base.data))


def live_venv(sandbox: Sandbox, release: str = "") -> str:
    link = f"{APP_ROOT}/releases/{release}/.venv" if release else f"{APP_ROOT}/current/.venv"
    return read_host(sandbox, f"readlink -f {link}", "the live venv").strip()


def victim(sandbox: Sandbox, venv: str) -> str:
    found = read_host(
        sandbox, f"ls -d {venv}/lib/python3*/site-packages/{VICTIM}", f"{VICTIM} in the venv"
    )
    return found.strip()


def test_venv_is_built_by_the_build_user_and_owned_by_root(
    sandbox: Sandbox, base: Artifact, first_deploy: str
) -> None:
    venv = live_venv(sandbox)
    assert venv.startswith(f"{APP_ROOT}/venvs/") and "/.build-" not in venv
    # Root's, and no one else may write: not a file, not a directory (links aside: their mode
    # means nothing).
    loose = read_host(
        sandbox, f"find {venv} ! -type l \\( ! -user root -o ! -group root -o -perm /022 \\)", ""
    )
    assert loose == "", loose
    record = dict(
        line.split("=", 1)
        for line in read_host(sandbox, f"cat {venv}/.ai-deploy-venv", "the record").splitlines()
    )
    assert record["lock"] == venv.rsplit("/", 1)[-1]
    assert record["built_by"] == BUILD_USER  # the owner of what uv wrote, before the chown
    assert record["python"].split()[1:2] == ["Python"] and record["uv"].startswith("uv ")
    assert int(record["files"]) > 500
    # The uv cache is the build user's alone, and uv wrote it as that user.
    cache = read_host(
        sandbox,
        f"stat -c '%U %a' {CACHE}; find {CACHE} -mindepth 1 ! -user {BUILD_USER} | head -n 3; "
        f"find {CACHE} -type f | head -n 1 | wc -l",
        "the uv cache",
    ).splitlines()
    assert cache == [f"{BUILD_USER} 700", "1"], cache
    # Nothing left aside, and root did not run uv (no root-owned uv cache was made).
    leftover = read_host(sandbox, f"ls -A {APP_ROOT}/venvs | grep '^\\.' || true", "venvs")
    assert leftover == ""
    assert "building venv" in first_deploy and f"as {BUILD_USER}" in first_deploy


def test_a_file_deleted_from_the_live_venv_is_rebuilt_by_the_same_deploy(
    sandbox: Sandbox, base: Artifact, first_deploy: str
) -> None:
    venv = live_venv(sandbox)
    module = victim(sandbox, venv)
    sandbox.sudo(f"rm -f {module}")
    started = time.monotonic()
    out = assert_ok(run_deploy(sandbox.inventory, base.data))
    took = time.monotonic() - started
    assert "is damaged" in out and VICTIM.split("/")[-1] in out, out
    assert "built in" in out, out
    assert read_host(sandbox, f"test -f {module} && echo back", "the module").strip() == "back"
    assert live_venv(sandbox) == venv  # the same path: swapped in, never deleted
    assert serving_release(sandbox.address) == base.release_id
    # The run after that is a no-op again.
    again = assert_ok(run_deploy(sandbox.inventory, base.data))
    totals = grand_total(again)
    assert (totals.success, totals.error) == (0, 0), again
    assert "building venv" not in again
    print(f"rebuild deploy took {took:.1f} s")


def test_verify_cost_on_the_example_venv(sandbox: Sandbox, first_deploy: str) -> None:
    venv = live_venv(sandbox)
    listing = (
        f"find {venv} -mindepth 1 -printf '%P %y %m %U:%G %s %T@ %l\\n' "
        "| grep -v '^\\.ai-deploy-[^/ ]* ' | LC_ALL=C sort | sha256sum"
    )
    out = read_host(
        sandbox,
        f"s=$(date +%s%N); for i in 1 2 3 4 5 6 7 8 9 10; do {listing} >/dev/null; done; "
        f'e=$(date +%s%N); echo $(( (e - s) / 10000000 ))" ms"; '
        f"sed -n 's/^files=//p' {venv}/.ai-deploy-venv",
        "the manifest check",
    ).split()
    ms, files = int(out[0]), int(out[2])
    print(f"manifest check of the example venv: {ms} ms for {files} files")
    assert ms < 200
    # The whole check the gate runs (marker, record, Python and uv versions, manifest), as
    # verify_venv writes it, timed on the host.
    scripts: list[str] = []

    class Capture:
        def run(self, script: str, *, timeout: float | None = None) -> Result:
            scripts.append(script)
            return Result(True, ["ok"], [])

    spec = Spec.from_data({**group_data_defaults(), "app_root": APP_ROOT})
    assert verify_venv(Capture(), spec, venv.rsplit("/", 1)[-1]).ok  # type: ignore[arg-type]
    timed = read_host(
        sandbox,
        f"s=$(date +%s%N); out=$(sh -c {shlex.quote(scripts[0])}); e=$(date +%s%N); "
        'echo "$out $(( (e - s) / 1000000 ))"',
        "the full venv check",
    ).split()
    print(f"full venv check on the host: {timed[1]} ms ({timed[0]})")
    assert timed[0] == "ok"


def test_switch_back_onto_a_damaged_venv_rebuilds_it_first(
    sandbox: Sandbox, base: Artifact, first_deploy: str, workdir: Path
) -> None:
    assert_ok(run_deploy(sandbox.inventory, base.data))
    assert serving_release(sandbox.address) == base.release_id
    venv = live_venv(sandbox)
    module = victim(sandbox, venv)
    # A release with another uv.lock (so another venv) that crashes at import.
    bad = build_variant(
        workdir, "crash-relocked", patch_main=crash_at_import, relock=relock_on_host(sandbox, "six")
    )
    sandbox.sudo(f"rm -f {module}")
    out = assert_failed(run_deploy(sandbox.inventory, bad.data))
    assert f"switching back to release {base.release_id}" in out, out
    assert "is damaged" in out and f"rolled back to {base.release_id}" in out, out
    assert read_host(sandbox, f"test -f {module} && echo back", "the module").strip() == "back"
    assert serving_release(sandbox.address) == base.release_id
    assert live_venv(sandbox, bad.release_id) != venv
    last = revisions(sandbox)[-1]
    assert f"rolled-back-to={base.release_id}" in last, last
