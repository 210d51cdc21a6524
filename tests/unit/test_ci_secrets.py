"""Secrets kept out of the CI log: the .env values and a provided key are masked first, and
anything shaped like a key or a token is masked and redacted in what is printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ai_deploy.report import secretlike
from ai_deploy.report.secretlike import LineRedactor, find_secrets, redact
from ai_deploy.report.secrets import env_values, mask_secret_like, mask_secrets

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
    from ai_deploy.rollout import pyinfra_run

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


# --- the shapes an app's error log really has ----------------------------------------------

NASTY = [
    # passwords in URLs, split where Python's urllib splits them (the last @ of the authority)
    ("sqlalchemy: postgresql://app:Pa55word@db.internal:5432/app refused", "Pa55word"),
    ("redis.exceptions.AuthenticationError redis://:r3d1s-pw@cache:6379/0", "r3d1s-pw"),
    ("fetching https://deploy:gh-pw-1@git.example.com/x.git", "gh-pw-1"),
    ("mongodb+srv://svc:p@ss@w0rd@cluster0.example.net/?retryWrites=true", "p@ss@w0rd"),
    ("amqp://guest:Gu3st%40home@mq:5672//", "Gu3st%40home"),
    # camelCase and glued names
    ("config: {'clientSecret': 'cs-1234abcd'}", "cs-1234abcd"),
    ("dbPassword=hunter2hunter2 rejected", "hunter2hunter2"),
    ('{"accessToken":"at.12345678"}', "at.12345678"),
    ("OpenAIApiKey=k3y-material", "k3y-material"),
    ("PGPASSWORD=pg-s3cret psql -h db", "pg-s3cret"),
    ("mysql -u root --password hunter2x -h db", "hunter2x"),
    # Authorization of every scheme, any case
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("headers={'authorization': 'Basic YWxhZGRpbjpvcGVu'}", "YWxhZGRpbjpvcGVu"),
    ("AUTHORIZATION: BEARER abcdefghijklmnopqrstuv", "abcdefghijklmnopqrstuv"),
    ("sent bearer abcdefghijklmnopqrstuv to the API", "abcdefghijklmnopqrstuv"),
    ('Authorization: Digest username="u", response="6629fae49393a053"', "6629fae49393a053"),
    # values with spaces: quoted anywhere, or the rest of a line that is only the assignment
    ("Settings(db_password='correct horse battery staple', debug=True)", "horse battery"),
    ('{"password": "two \\"quoted\\" words"}', "quoted"),
    ('{"msg": "{\\"password\\": \\"inner json words\\"}"}', "json words"),
    ("PASSWORD=correct horse battery staple", "battery staple"),
    ("  export API_SECRET=with spaces in it", "spaces in it"),
    ("- password: my pass phrase", "pass phrase"),
    # shaped tokens
    ("HF_HUB_TOKEN missing; tried hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "hf_AbCdEfGh"),
    ("stripe.error: sk_live_51HxYzAbCdEfGhIjKlMn", "sk_live_51HxYz"),
    ("stripe: rk_test_51HxYzAbCdEfGhIjKlMn", "rk_test_51HxYz"),
    ("oauth client GOCSPX-AbCdEfGhIjKlMnOpQrStUv", "GOCSPX-AbCdEf"),
    # signed URLs
    (
        "GET https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=sa%40p.iam&X-Goog-Signature=5e1f0a9b8c7d6e5f&X-Goog-Expires=900",
        "5e1f0a9b8c7d6e5f",
    ),
    ("https://b.s3.amazonaws.com/o?AWSAccessKeyId=AKID&Signature=abc%2Bdef%3D&Expires=1", "abc%2B"),
    ("https://b.s3.amazonaws.com/o?X-Amz-Security-Token=FwoGZXIvYXdzE&X-Amz-Date=1", "FwoGZXIv"),
    ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=Zm9vYmFy%3D&se=2026", "Zm9vYmFy"),
    # all-capitals values are secrets unless made of placeholder words
    ("API_KEY=HUNTER2HUNTER2", "HUNTER2HUNTER2"),
    ("ADMIN_PASSWORD=CORRECTHORSEBATTERY", "CORRECTHORSEBATTERY"),
]


@pytest.mark.parametrize(("line", "secret"), NASTY)
def test_the_common_shapes_of_secrets_are_redacted(line: str, secret: str) -> None:
    shown = redact(line)
    assert secret not in shown, shown
    assert "***" in shown
    assert any(secret in found for found in find_secrets(line))
    assert secret not in LineRedactor()(line + "\n")


def test_a_multi_word_value_is_masked_whole_and_by_its_first_word(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mask_secret_like("PASSWORD=correct horse battery staple", GHA)
    masked = capsys.readouterr().out.splitlines()
    assert "::add-mask::correct horse battery staple" in masked
    assert "::add-mask::correct" in masked


def test_only_the_password_of_a_url_is_blanked() -> None:
    assert (
        redact("connecting to postgresql://app:Pa55word@db:5432/app?sslmode=require")
        == "connecting to postgresql://app:***@db:5432/app?sslmode=require"
    )
    assert redact("redis://:pw-1234@cache:6379/0") == "redis://:***@cache:6379/0"


@pytest.mark.parametrize(
    "line",
    [
        "prompt_tokens=12 completion_tokens=80 max_tokens=512 total_tokens=92",
        "tokenizer: loaded from /models/llama/tokenizer.json",
        "git@github.com:org/repo.git fetched",
        "ssh root@10.201.0.5 -p 22",
        "postgresql://localhost:5432/app is up",
        "postgresql://user:password@localhost/db (the example in the docs)",
        "DATABASE_URL=postgresql://app:${DB_PASSWORD}@db/app",
        "password authentication failed for user app",
        "Basic setup done; Bearer tokens accepted",
        "Authorization: missing header",
        "KeyError: 'model_path'",
        "OPENAI_API_KEY=YOUR_OPENAI_KEY",
        "export TOKEN=$GITHUB_TOKEN",
        "password: ********",
        "signature verified for release 20260101-abcdef",
        'INFO: 10.0.0.7:51234 - "GET /health HTTP/1.1" 200 OK',
        "hf_hub_download(repo_id='org/model', filename='model.safetensors')",
        "loaded 32 layers in 3.2 s (key cache 2.1 GiB)",
    ],
)
def test_ordinary_log_text_is_not_masked_away(line: str) -> None:
    assert find_secrets(line) == []
    assert redact(line) == line


def test_a_long_line_without_secrets_is_redacted_quickly() -> None:
    """A base64 blob or a minified line of 60 000 characters (humps everywhere) comes back
    unchanged without the patterns backtracking for ever (a hang would time the suite out)."""
    blob = "aB3xY" * 12_000
    assert redact(blob) == blob
    assert redact("key " + blob) == "key " + blob
