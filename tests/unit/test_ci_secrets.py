"""Secrets kept out of the CI log: the .env values and a provided key are masked first, and
anything shaped like a key or a token is masked and redacted in what is printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ai_deploy.ci import secretlike
from ai_deploy.ci.secretlike import LineRedactor, find_secrets, redact
from ai_deploy.ci.secrets import env_values, mask_secret_like, mask_secrets

pytestmark = pytest.mark.unit

GHA = {"GITHUB_ACTIONS": "true"}


@pytest.fixture(autouse=True)
def no_registered_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no .env values remembered from another."""
    monkeypatch.setattr(secretlike, "_known", set())


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


# --- anything that looks like a key or a token -----------------------------------------------

SHAPED = [
    "sk-abc123DEF456ghi789",
    "sk-proj-AbCdEf0123456789_xyz",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1B2" * 9,
    "github_pat_" + "x" * 30,
    "xoxb-123456789012-abcdefABCDEF",
    "xoxp-0123456789-zzzz",
    "AIza" + "S" * 35,
]


@pytest.mark.parametrize("token", SHAPED)
def test_shaped_tokens_are_found_and_redacted(token: str) -> None:
    line = f"error while calling the API with {token}, giving up"
    assert find_secrets(line) == [token]
    assert redact(line) == "error while calling the API with ***, giving up"


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("OPENAI_API_KEY=not-shaped-like-anything", "not-shaped-like-anything"),
        ("KeyError: 'DB_PASSWORD=hunter2hunter2'", "hunter2hunter2"),
        ('{"api_key": "q9w8e7r6t5y4"}', "q9w8e7r6t5y4"),
        ("export GITHUB_TOKEN='s3cr3t-value'", "s3cr3t-value"),
        ("client_secret: abcd/efgh+ijkl==", "abcd/efgh+ijkl=="),
        ("https://x.example/cb?token=abcdef123456&next=1", "abcdef123456"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
        ("SECRET=plainwords", "plainwords"),
    ],
)
def test_assignments_of_keys_tokens_secrets_and_passwords_are_redacted(
    line: str, secret: str
) -> None:
    assert secret in find_secrets(line)
    assert secret not in redact(line)
    assert "***" in redact(line)


@pytest.mark.parametrize(
    "line",
    [
        "--data 'no-equals-sign' is not KEY=VALUE",
        "AI_DEPLOY_SSH_KEY_TTL_MINUTES='abc' is not a whole number",
        "GOOGLE_APPLICATION_CREDENTIALS=/tmp/gone.json does not exist",
        "monkey=banana; turkey: sandwich",
        "ssh-keys entry for ai-deploy added to ai-server-prod",
        "set TOKEN=$GITHUB_TOKEN in the workflow",
        "release 20260101-abcdef is healthy at http://10.0.0.1:8000/health",
    ],
)
def test_ordinary_messages_are_left_alone(line: str) -> None:
    assert find_secrets(line) == []
    assert redact(line) == line


def test_a_private_key_block_is_redacted_whole_and_line_by_line() -> None:
    block = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "QyNTUxOQAAACBbody\n-----END OPENSSH PRIVATE KEY-----"
    )
    text = f"before\n{block}\nafter"
    assert redact(text) == "before\n***\nafter"
    found = find_secrets(text)
    assert block in found and "b3BlbnNzaC1rZXktdjEAAAAA" in found
    stream = LineRedactor()
    lines = [stream(line) for line in (text + "\n").splitlines(keepends=True)]
    assert "".join(lines) == "before\n***\n***\n***\n***\nafter\n"


def test_registered_env_values_are_redacted_everywhere(tmp_path: Path) -> None:
    env = tmp_path / "prod.env"
    env.write_text("MODEL_ENDPOINT_PASSPHRASE_OF_SORTS=plain-looking-value-42\n")
    mask_secrets(str(env), {})
    assert redact("the app said plain-looking-value-42 twice") == "the app said *** twice"


def test_mask_secret_like_masks_before_returning_the_redacted_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = "app exited: OPENAI_API_KEY=sk-abc123def456ghi789 not accepted"
    shown = mask_secret_like(text, GHA)
    out = capsys.readouterr().out
    assert out.splitlines() == ["::add-mask::sk-abc123def456ghi789"]
    assert shown == "app exited: OPENAI_API_KEY=*** not accepted"
    assert mask_secret_like(text, {}) == shown
    assert capsys.readouterr().out == ""  # outside GitHub Actions nothing is printed


def test_pyinfra_output_is_redacted_before_it_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ai_deploy.ci import pyinfra_run

    script = tmp_path / "fake_pyinfra.py"
    script.write_text(
        "print('[10.0.0.5] last lines of error.log:')\n"
        "print('    openai.AuthenticationError: OPENAI_API_KEY=sk-abc123def456ghi789 rejected')\n"
        "print('-----BEGIN RSA PRIVATE KEY-----')\n"
        "print('MIIEowIBAAKCAQEA')\n"
        "print('-----END RSA PRIVATE KEY-----')\n"
        "print('done')\n"
    )
    monkeypatch.setattr(
        pyinfra_run, "pyinfra_command", lambda *a, **k: [sys.executable, str(script)]
    )
    # -v: pyinfra's own stream is printed (by default only the hosts' events are)
    env = dict(os.environ, AI_DEPLOY_VERBOSE="1")
    result = pyinfra_run.run_pyinfra_streamed("inventory.py", [], env)
    out = capsys.readouterr().out
    assert result.returncode == 0
    assert "sk-abc123def456ghi789" not in out and "MIIEowIBAAKCAQEA" not in out
    assert "OPENAI_API_KEY=*** rejected" in out
    assert "done" in out
    assert all("sk-abc" not in line and "MIIE" not in line for line in result.tail)


def test_a_token_right_after_a_colour_code_is_redacted() -> None:
    line = "\x1b[33mOPENAI_API_KEY=\x1b[0m\x1b[31msk-abc123def456ghi789\x1b[0m failed"
    assert "sk-abc123def456ghi789" not in redact(line)
    assert "sk-abc123def456ghi789" not in LineRedactor()(line + "\n")
