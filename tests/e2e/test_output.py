"""What `ai-deploy deploy`, `rollback` and `restart` print by default, on a sandbox host: a
healthy first deploy in at most 40 lines (what changed, the gate's verdict, the phase times, one
summary), a second one that says so and restarts nothing, a switched-back deploy that says each
error once, pyinfra's whole stream again with AI_DEPLOY_VERBOSE or -v, and rollback and restart
ending with the same summary as a deploy."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.variants import crash_at_import
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    REPO,
    Artifact,
    build_variant,
    main_pid,
    run_cli,
    serving_release,
)

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"
MAX_LINES = 40  # a healthy single-host deploy, by default


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("output")


@pytest.fixture(scope="module")
def good(work: Path) -> Artifact:
    return build_variant(work, "output-good")


def _ai_deploy(*args: str, **extra_env: str) -> tuple[int, list[str]]:
    code, out = run_cli(AI_DEPLOY, REPO, *args, **extra_env)
    return code, out.splitlines()


def _deploy(
    sandbox: Sandbox, artifact: Artifact, work: Path, *args: str, **env: str
) -> tuple[int, list[str]]:
    env_file = work / "app.env"
    env_file.write_text("MODEL_LOAD_SECONDS=1\n")
    return _ai_deploy(
        "deploy", "--no-gcp", "--host", sandbox.address, "--artifact", str(artifact.path),
        "--data", f"env_file={env_file}", "--health-interval", "1", *args, **env,
    )  # fmt: skip


def _pyinfra_stream(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("--> ") or "Grand total" in line]


def test_a_healthy_first_deploy_is_short_and_a_second_changes_nothing(
    sandbox: Sandbox, good: Artifact, work: Path
) -> None:
    code, lines = _deploy(sandbox, good, work)
    assert code == 0
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines"
    assert not _pyinfra_stream(lines)
    assert any(line.startswith(f"[{sandbox.address}] changed: ") for line in lines)
    assert f"[{sandbox.address}] deploy of {good.release_id} healthy" in lines  # the verdict
    assert lines[-2].startswith("phases: artifact ") and " deploy " in lines[-2]
    assert lines[-1].startswith(f"\u2705 ai-server deploy succeeded: release {good.release_id}")
    # --no-gcp: no GCP phase is announced
    assert [line for line in lines if line.startswith("==> ")] == [
        "==> Check the artifact and the settings",
        "==> Check SSH",
        "==> Roll out",  # one host: the rollout of one, its outside check included
    ]
    assert serving_release(sandbox.address) == good.release_id

    pid = main_pid(sandbox)
    code, again = _deploy(sandbox, good, work)
    assert code == 0
    assert f"[{sandbox.address}] release {good.release_id} is already serving" in again
    assert not [line for line in again if " changed: " in line], again
    assert main_pid(sandbox) == pid  # nothing restarted
    assert len(again) < len(lines)


def test_a_switched_back_deploy_says_each_error_once(
    sandbox: Sandbox, good: Artifact, work: Path
) -> None:
    crash = build_variant(work, "output-crash", patch_main=crash_at_import)
    if serving_release(sandbox.address) != good.release_id:
        assert _deploy(sandbox, good, work)[0] == 0
    code, lines = _deploy(sandbox, crash, work)
    assert code == 15
    text = "\n".join(lines)
    # the app's error-log tail, the host's error, the run's error: each once
    assert text.count("RuntimeError: bench: this release crashes at import") == 1, text
    assert len([line for line in lines if line.startswith(f"[{sandbox.address}] error: ")]) == 1
    assert len([line for line in lines if line.startswith("error: deploy failed (exit 15)")]) == 1
    assert not [line for line in lines if line.startswith("ai-deploy: ")], text
    assert "No hosts remaining" not in text and "Error: executed" not in text
    assert lines[-1].startswith("\u21a9\ufe0f ai-server deploy rolled back")
    assert serving_release(sandbox.address) == good.release_id


def test_the_verbose_variable_brings_back_pyinfra_stream(
    sandbox: Sandbox, good: Artifact, work: Path
) -> None:
    code, lines = _deploy(sandbox, good, work, AI_DEPLOY_VERBOSE="1")
    assert code == 0
    stream = _pyinfra_stream(lines)
    assert "--> Beginning operation run..." in stream
    assert any("Grand total" in line for line in stream)
    assert not [line for line in lines if " changed: " in line]  # the events are not repeated
    assert lines[-1].startswith("\u2705 ai-server deploy succeeded")


def test_rollback_and_restart_end_with_the_summary_of_a_deploy(
    sandbox: Sandbox, good: Artifact, work: Path
) -> None:
    second = build_variant(work, "output-second")
    assert _deploy(sandbox, good, work)[0] == 0
    assert _deploy(sandbox, second, work)[0] == 0

    code, lines = _ai_deploy("rollback", "-i", str(sandbox.inventory))
    assert code == 0
    assert not _pyinfra_stream(lines)
    assert lines[-2].startswith("phases: rollback ")
    assert lines[-1].startswith(f"\u2705 ai-server rollback succeeded: release {good.release_id}")
    assert serving_release(sandbox.address) == good.release_id

    code, lines = _ai_deploy("rollback", "-v", str(second.release_id), "-i", str(sandbox.inventory))
    assert code == 0
    assert any("Grand total" in line for line in lines)
    assert lines[-1].startswith(f"\u2705 ai-server rollback succeeded: release {second.release_id}")

    code, lines = _ai_deploy("restart", "-i", str(sandbox.inventory))
    assert code == 0
    assert f"{sandbox.name} | release {second.release_id} restarted and healthy" in lines
    assert lines[-2].startswith("phases: restart ")
    assert lines[-1].startswith(f"\u2705 ai-server restart succeeded: release {second.release_id}")
    assert serving_release(sandbox.address) == second.release_id
