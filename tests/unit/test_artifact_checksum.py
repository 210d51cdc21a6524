"""The `.sha256` beside the artifact: checked when it is there, required in CI, and a deploy
with a missing or wrong one stops with exit 2 before anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_deploy.artifact.build import ArtifactError, build_artifact, sha256_file
from ai_deploy.artifact.checksum import check_sidecar, sidecar_of
from ai_deploy.ci.flow import run_deploy
from ai_deploy.ci.options import DeployOptions

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ai-server"
CI = {"GITHUB_ACTIONS": "true"}


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return build_artifact(EXAMPLE, tmp_path / "dist", artifact_id="sum-test")


def test_the_build_writes_a_sidecar_that_matches(artifact: Path) -> None:
    assert sidecar_of(artifact).is_file()
    assert check_sidecar(artifact, sha256_file(artifact), CI).endswith("matches")


def test_a_changed_artifact_or_a_foreign_sidecar_is_refused(artifact: Path) -> None:
    digest = sha256_file(artifact)
    with pytest.raises(ArtifactError, match="the artifact changed after it was built"):
        check_sidecar(artifact, "0" * 64, {})
    sidecar_of(artifact).write_text(f"{digest}  other.tar.gz\n")
    with pytest.raises(ArtifactError, match=r"is the checksum of other\.tar\.gz"):
        check_sidecar(artifact, digest, {})
    sidecar_of(artifact).write_text("not a checksum\n")
    with pytest.raises(ArtifactError, match="sha256sum"):
        check_sidecar(artifact, digest, {})


def test_missing_is_refused_in_ci_only_unless_told(artifact: Path) -> None:
    digest = sha256_file(artifact)
    sidecar_of(artifact).unlink()
    assert "not checked" in check_sidecar(artifact, digest, {})
    with pytest.raises(ArtifactError, match="AI_DEPLOY_REQUIRE_SHA256=false"):
        check_sidecar(artifact, digest, CI)
    assert "not checked" in check_sidecar(
        artifact, digest, {**CI, "AI_DEPLOY_REQUIRE_SHA256": "false"}
    )
    with pytest.raises(ArtifactError, match="use true or false"):
        check_sidecar(artifact, digest, {"AI_DEPLOY_REQUIRE_SHA256": "maybe"})


def test_a_ci_deploy_without_or_with_a_wrong_sidecar_exits_2(artifact: Path, capsys) -> None:
    def deploy() -> int:
        opts = DeployOptions(artifact=artifact, use_gcp=False, host="127.0.0.1")
        return run_deploy(opts, env={"PATH": "/usr/bin:/bin", **CI})

    sidecar_of(artifact).write_text(f"{'f' * 64}  {artifact.name}\n")
    # In GitHub Actions the error is an ::error annotation (stdout), said once
    assert deploy() == 2
    assert capsys.readouterr().out.count("does not match") == 1
    sidecar_of(artifact).unlink()
    assert deploy() == 2
    assert capsys.readouterr().out.count(f"{artifact.name}.sha256 is missing") == 1
