"""The tool as users get it: a wheel built from this tree, installed with `uv tool install` into
a fresh tool directory, run from a directory with no checkout. It deploys to a sandbox host with
`ai-deploy deploy --no-gcp`, shows pyinfra's plan with `--dry-run` without changing the host,
and exits with the table's code when a release is switched back."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.variants import crash_at_import
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    build_variant,
    host_snapshot,
    revisions,
    run_cli,
    serving_release,
)

pytestmark = pytest.mark.e2e


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`ai-deploy` from a wheel of this tree, installed into its own tool directory; the pins
    of uv.lock are the constraints, so it gets the versions the tests run with."""
    root = tmp_path_factory.mktemp("tool")
    dist, tools, bin_dir = root / "dist", root / "tools", root / "bin"
    run = {"check": True, "cwd": REPO, "capture_output": True, "text": True, "timeout": 600}
    subprocess.run([*_uv(), "build", "--wheel", "-q", "-o", str(dist)], **run)
    constraints = root / "constraints.txt"
    subprocess.run(
        [
            *_uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
            "-q",
            "-o",
            str(constraints),
        ],
        **run,
    )
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    env = dict(os.environ, UV_TOOL_DIR=str(tools), UV_TOOL_BIN_DIR=str(bin_dir))
    subprocess.run(
        [*_uv(), "tool", "install", "-q", "-c", str(constraints), str(wheels[0])], env=env, **run
    )
    tool = bin_dir / "ai-deploy"
    assert tool.is_file()
    yield tool


def _run(tool: Path, cwd: Path, *args: str) -> tuple[int, str]:
    return run_cli(tool, cwd, *args)


def test_installed_tool_deploys_plans_and_reports_from_any_directory(
    installed: Path, sandbox: Sandbox, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "not-a-checkout"
    elsewhere.mkdir()
    env_file = tmp_path / "app.env"
    env_file.write_text("MODEL_LOAD_SECONDS=1\n")
    first = build_variant(tmp_path, "installed-first")
    second = build_variant(tmp_path, "installed-second")
    common = ("--no-gcp", "--host", sandbox.address, "--data", f"env_file={env_file}")

    code, out = _run(installed, elsewhere, "deploy", "--artifact", str(first.path), *common)
    assert code == 0, out
    assert "deploy.py not found" not in out
    assert serving_release(sandbox.address) == first.release_id
    assert sandbox.sudo(f"readlink {APP_ROOT}/current").strip() == f"releases/{first.release_id}"

    # The dry run prints the plan per host and changes nothing.
    before = host_snapshot(sandbox)
    code, out = _run(
        installed, elsewhere, "deploy", "--dry-run", "--artifact", str(second.path), *common
    )
    assert code == 0, out
    assert "Detected changes" in out, out
    assert f"plan: release {second.release_id} goes live by socket" in out
    assert f"(serving now: {first.release_id})" in out
    assert "venv" in out and "is ready (no uv sync)" in out
    assert host_snapshot(sandbox) == before
    assert serving_release(sandbox.address) == first.release_id

    # The same artifact again: already serving, nothing restarted.
    code, out = _run(installed, elsewhere, "deploy", "--artifact", str(first.path), *common)
    assert code == 0, out
    assert host_snapshot(sandbox)["main_pid"] == before["main_pid"]


def test_a_release_switched_back_exits_15_and_keeps_the_previous(
    installed: Path, sandbox: Sandbox, tmp_path: Path
) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("MODEL_LOAD_SECONDS=1\n")
    common = ("--no-gcp", "--host", sandbox.address, "--data", f"env_file={env_file}")
    good = build_variant(tmp_path, "installed-good")
    bad = build_variant(tmp_path, "installed-crash", patch_main=crash_at_import)
    code, out = _run(installed, tmp_path, "deploy", "--artifact", str(good.path), *common)
    assert code == 0, out
    code, out = _run(installed, tmp_path, "deploy", "--artifact", str(bad.path), *common)
    assert code == 15, out
    assert serving_release(sandbox.address) == good.release_id
    assert f"rolled-back-to={good.release_id}" in revisions(sandbox)[-1]


def test_a_refused_key_exits_13_at_once(installed: Path, sandbox: Sandbox, tmp_path: Path) -> None:
    """A provided key the host does not accept stays refused: the run stops on the first
    "Permission denied (publickey)" instead of waiting out ssh_wait_s (180 s)."""
    key = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60
    )
    art = build_variant(tmp_path, "installed-refused")
    env = dict(os.environ, AI_DEPLOY_SSH_USER="ubuntu", AI_DEPLOY_SSH_PRIVATE_KEY=key.read_text())
    proc = subprocess.run(
        [
            str(installed),
            "deploy",
            "--no-gcp",
            "--host",
            sandbox.address,
            "--artifact",
            str(art.path),
            "--data",
            "env_allow_empty=true",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 13, out
    assert "refused the provided key" in out
    assert "waiting for SSH" not in out  # no retry
