"""A host deployed by the previous version of the tool, with that version's defaults (logs in
/var/log/dojangkok, a chroma_db data dir, the ai-deploy-build user), upgrades in place: the
next deploy with this version serves, keeps the host's .env (not given again) and its releases,
rolls back to the old release, and a second run changes nothing.

The previous version is this repository at OLD_TOOL (the last commit before names were derived
from app_name), taken with `git archive` and run with the project's own venv."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    assert_ok,
    build_variant,
    deploy_command,
    main_pid,
    read_host,
    run_deploy,
    serving_release,
)

pytestmark = pytest.mark.e2e

OLD_TOOL = "744e1a6f26adb2a86cc8760308dfc11e4d3691dc"
OLD_LOG_DIR = "/var/log/dojangkok"
ENV_TEXT = "MODEL_LOAD_SECONDS=1\nUPGRADE_MARKER=kept-from-the-old-tool\n"


@pytest.fixture(scope="module")
def old_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("old-tool")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", OLD_TOOL],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert archive.returncode == 0, (
        f"this test runs the previous version of the tool ({OLD_TOOL}) from the repository's "
        f"history, which this clone lacks: {archive.stderr.decode(errors='replace')}"
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=120)
    return dest


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Artifact, Artifact]]:
    work = tmp_path_factory.mktemp("upgrade")
    yield build_variant(work, "upgrade-old"), build_variant(work, "upgrade-new")


def _env_state(h: Sandbox) -> str:
    return read_host(h, f"stat -c '%U %G %a' {APP_ROOT}/.env; md5sum < {APP_ROOT}/.env", ".env")


def test_an_old_host_upgrades_in_place(
    sandbox: Sandbox, old_tool: Path, artifacts: tuple[Artifact, Artifact], tmp_path: Path
) -> None:
    old, new = artifacts
    env_file = tmp_path / "app.env"
    env_file.write_text(ENV_TEXT)
    # The previous version deploys the first release, with its own defaults.
    argv = deploy_command(sandbox.inventory, old.data, f"env_file={env_file}")
    argv[0] = str(REPO / ".venv" / "bin" / "python")
    argv[1:1] = ["-m", "pyinfra"]
    done = subprocess.run(
        argv,
        cwd=old_tool,
        env={**os.environ, "PYTHONPATH": str(old_tool), "NO_COLOR": "1", "TERM": "dumb"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-5000:]
    assert serving_release(sandbox.address) == old.release_id
    assert sandbox.sudo(f"test -f {OLD_LOG_DIR}/ai-server.log && echo yes").strip() == "yes"
    assert sandbox.sudo(f"test -d {APP_ROOT}/chroma_db && echo yes").strip() == "yes"
    sandbox.sudo(f"echo kept > {APP_ROOT}/chroma_db/data.bin")
    env_before = _env_state(sandbox)

    # This version: no env_file given, the host's .env is kept.
    out = assert_ok(run_deploy(sandbox.inventory, new.data))
    assert serving_release(sandbox.address) == new.release_id, out
    assert _env_state(sandbox) == env_before
    previous = sandbox.sudo(f"readlink {APP_ROOT}/previous").strip()
    assert previous == f"releases/{old.release_id}"
    assert sandbox.sudo(f"test -d {APP_ROOT}/releases/{old.release_id} && echo yes").strip()
    # The service now logs under /var/log/<app_name>; what the old one wrote stays where it was.
    unit = sandbox.sudo("systemctl cat ai-server.service")
    assert "/var/log/ai-server/ai-server.log" in unit, unit
    assert sandbox.sudo("test -f /var/log/ai-server/ai-server.log && echo yes").strip() == "yes"
    assert sandbox.sudo(f"test -f {OLD_LOG_DIR}/ai-server.log && echo yes").strip() == "yes"
    # The data dir the old defaults made is left alone, contents included.
    data = shlex.quote(f"{APP_ROOT}/chroma_db/data.bin")
    assert sandbox.sudo(f"cat {data}").strip() == "kept"

    # A second run changes nothing and restarts nothing.
    pid = main_pid(sandbox)
    assert_ok(run_deploy(sandbox.inventory, new.data))
    assert main_pid(sandbox) == pid

    # The old release is still a release this version can go back to.
    assert_ok(run_deploy(sandbox.inventory, "rollback=previous"))
    assert serving_release(sandbox.address) == old.release_id
    assert _env_state(sandbox) == env_before
