"""Secrets kept out of the CI log: the .env values and a provided key are masked first."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_deploy.ci.secrets import env_values, mask_secrets

pytestmark = pytest.mark.unit

GHA = {"GITHUB_ACTIONS": "true"}


def test_env_values_reads_values_unquoted_and_skips_comments_and_short_ones() -> None:
    text = "# comment\nOPENAI_API_KEY=sk-abc123\nQUOTED='p@ss word'\nDEBUG=1\n\nNOEQUALS\n"
    assert env_values(text) == ["sk-abc123", "p@ss word"]


def test_env_file_values_and_the_key_are_masked_in_github_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "prod.env"
    env.write_text("OPENAI_API_KEY=sk-abc123\nMODEL=big-model-v2\n")
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAkeybody\n-----END OPENSSH PRIVATE KEY-----\n"
    assert mask_secrets(str(env), {**GHA, "AI_DEPLOY_SSH_PRIVATE_KEY": key}) == 3
    out = capsys.readouterr().out
    assert "::add-mask::sk-abc123" in out
    assert "::add-mask::big-model-v2" in out
    assert "::add-mask::AAAAkeybody" in out


def test_nothing_is_printed_outside_github_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "prod.env"
    env.write_text("OPENAI_API_KEY=sk-abc123\n")
    mask_secrets(str(env), {})
    assert "sk-abc123" not in capsys.readouterr().out
