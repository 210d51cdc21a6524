"""CI output: workflow commands in GitHub Actions, plain text elsewhere, and the job summary."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ai_deploy.report.notify import DeployEvent
from ai_deploy.report.output import (
    Phases,
    add_mask,
    commands_stopped,
    error,
    escape_data,
    escape_property,
    group,
    in_github_actions,
    render_step_summary,
    run_url,
    warning,
    write_step_summary,
)

pytestmark = pytest.mark.unit

GHA = {"GITHUB_ACTIONS": "true"}
LOCAL: dict[str, str] = {}


def _event(**overrides: object) -> DeployEvent:
    values: dict[str, object] = {
        "outcome": "success",
        "release": "3f2a9c1",
        "hosts": ["10.201.0.2", "10.201.0.3"],
        "duration_s": 42.5,
    }
    values.update(overrides)
    return DeployEvent(**values)  # type: ignore[arg-type]


def test_in_github_actions_needs_exactly_true() -> None:
    assert in_github_actions(GHA)
    assert not in_github_actions(LOCAL)
    assert not in_github_actions({"GITHUB_ACTIONS": "1"})


def test_in_github_actions_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert in_github_actions()
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert not in_github_actions()


def test_escaping_follows_the_workflow_command_rules() -> None:
    assert escape_data("100%\r\nnext::x") == "100%25%0D%0Anext::x"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_group_in_github_actions() -> None:
    out = io.StringIO()
    with group("Open the firewall window", env=GHA, stream=out):
        out.write("inside\n")
    assert out.getvalue() == "::group::Open the firewall window\ninside\n::endgroup::\n"


def test_group_title_cannot_inject_a_command() -> None:
    out = io.StringIO()
    with group("deploy\n::add-mask::x", env=GHA, stream=out):
        pass
    assert out.getvalue().splitlines() == ["::group::deploy%0A::add-mask::x", "::endgroup::"]


def test_group_ends_on_exception() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), group("deploy", env=GHA, stream=out):
        raise RuntimeError("boom")
    assert out.getvalue().splitlines() == ["::group::deploy", "::endgroup::"]


def test_nested_group_becomes_a_heading() -> None:
    out = io.StringIO()
    with group("outer", env=GHA, stream=out), group("inner", env=GHA, stream=out):
        pass
    assert out.getvalue().splitlines() == ["::group::outer", "==> inner", "::endgroup::"]


def test_group_outside_github_actions_is_a_heading() -> None:
    out = io.StringIO()
    with group("Deploy", env=LOCAL, stream=out):
        out.write("x\n")
    assert out.getvalue() == "==> Deploy\nx\n"


def test_group_writes_to_stdout_by_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with group("Health check"):
        print("attempt 1/12")
    assert capsys.readouterr().out == "::group::Health check\nattempt 1/12\n::endgroup::\n"


def test_error_annotation_with_escaped_title_and_message() -> None:
    out = io.StringIO()
    error(
        "health failed: 12/12 attempts\nlast: 502",
        title="Health: check, failed",
        env=GHA,
        stream=out,
    )
    assert out.getvalue() == (
        "::error title=Health%3A check%2C failed::health failed: 12/12 attempts%0Alast: 502\n"
    )


def test_error_without_title_and_with_file() -> None:
    out = io.StringIO()
    error("100% broken", env=GHA, stream=out)
    error("bad key", title="Config", file="deploy.py", line=3, env=GHA, stream=out)
    assert out.getvalue().splitlines() == [
        "::error::100%25 broken",
        "::error file=deploy.py,line=3,title=Config::bad key",
    ]


def test_error_outside_github_actions_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    error("no rule", title="Firewall", env=LOCAL)
    warning("slack failed", env=LOCAL)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: Firewall: no rule\nwarning: slack failed\n"


def test_warning_annotation() -> None:
    out = io.StringIO()
    warning("discord notification failed", title="Notify", env=GHA, stream=out)
    assert out.getvalue() == "::warning title=Notify::discord notification failed\n"


def test_add_mask() -> None:
    out = io.StringIO()
    add_mask("s3cr%t", env=GHA, stream=out)
    assert out.getvalue() == "::add-mask::s3cr%25t\n"


def test_add_mask_masks_each_line_of_a_multiline_value() -> None:
    out = io.StringIO()
    add_mask("-----BEGIN KEY-----\nabc\n-----END KEY-----", env=GHA, stream=out)
    assert out.getvalue().splitlines() == [
        "::add-mask::-----BEGIN KEY-----%0Aabc%0A-----END KEY-----",
        "::add-mask::-----BEGIN KEY-----",
        "::add-mask::abc",
        "::add-mask::-----END KEY-----",
    ]


def test_add_mask_prints_nothing_outside_github_actions_or_for_empty() -> None:
    out = io.StringIO()
    add_mask("secret", env=LOCAL, stream=out)
    add_mask("", env=GHA, stream=out)
    assert out.getvalue() == ""


def test_commands_stopped_uses_a_fresh_token() -> None:
    out = io.StringIO()
    with commands_stopped(env=GHA, stream=out):
        out.write("::add-mask::from-a-host\n")
    with commands_stopped(env=GHA, stream=out):
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    first, second = lines[0], lines[3]
    assert first.startswith("::stop-commands::")
    token = first.removeprefix("::stop-commands::")
    assert len(token) == 32
    assert lines[1:3] == ["::add-mask::from-a-host", f"::{token}::"]
    assert second.startswith("::stop-commands::")
    assert second != first
    with commands_stopped(env=LOCAL, stream=out):
        pass
    assert len(out.getvalue().splitlines()) == 5  # nothing printed outside GitHub Actions


def test_run_url() -> None:
    env = {
        **GHA,
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/ai-server",
        "GITHUB_RUN_ID": "42",
        "GITHUB_RUN_ATTEMPT": "2",
    }
    assert run_url(env) == "https://github.com/acme/ai-server/actions/runs/42/attempts/2"
    del env["GITHUB_RUN_ATTEMPT"]
    assert run_url(env) == "https://github.com/acme/ai-server/actions/runs/42"
    assert run_url({}) is None


def test_phases_records_durations_and_the_first_failure() -> None:
    out = io.StringIO()
    phases = Phases(env=GHA, stream=out)
    with phases.phase("auth", "Authenticate to GCP"):
        pass
    with pytest.raises(RuntimeError), phases.phase("deploy"):
        raise RuntimeError("pyinfra failed")
    with pytest.raises(KeyboardInterrupt), phases.phase("health"):
        raise KeyboardInterrupt
    assert list(phases.durations) == ["auth", "deploy", "health"]
    assert all(seconds >= 0 for seconds in phases.durations.values())
    assert phases.failed == "deploy"
    assert out.getvalue().splitlines() == [
        "::group::Authenticate to GCP",
        "::endgroup::",
        "::group::deploy",
        "::endgroup::",
        "::group::health",
        "::endgroup::",
    ]


def test_summary_has_release_hosts_phases_and_outcome() -> None:
    event = _event(
        outcome="rollback",
        failed_phase="health",
        message="health check failed after 12 attempts",
        run_url="https://github.com/acme/ai-server/actions/runs/42/attempts/1",
    )
    text = render_step_summary(event, {"auth": 1.25, "deploy": 30.0, "health": 61.0})
    assert text.startswith("## \u21a9\ufe0f ai-server deploy rolled back\n")
    assert "| Release | `3f2a9c1` |" in text
    assert "| Outcome | rollback |" in text
    assert "| Hosts | 10.201.0.2, 10.201.0.3 |" in text
    assert "| Duration | 42.5 s |" in text
    assert "| Failed phase | health |" in text
    assert "(https://github.com/acme/ai-server/actions/runs/42/attempts/1)" in text
    assert "| auth | 1.2 s | \u2705 |" in text
    assert "| deploy | 30.0 s | \u2705 |" in text
    assert "| health | 1 min 1 s | \u274c failed |" in text
    assert "```\nhealth check failed after 12 attempts\n```" in text


def test_summary_escapes_event_values() -> None:
    event = _event(
        outcome="failure",
        hosts=["a|b", "<script>"],
        message="contains ``` a fence\nand | pipes",
    )
    text = render_step_summary(event, [("de|ploy", 1.0)])
    assert "| Hosts | a\\|b, &lt;script&gt; |" in text
    assert "| de\\|ploy | 1.0 s |" in text
    assert "````\ncontains ``` a fence\nand | pipes\n````" in text


def test_write_step_summary_appends(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    assert write_step_summary(_event(), {"deploy": 3.0}, env=env) == summary
    assert write_step_summary(_event(outcome="failure"), env=env) == summary
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n## \u2705 ai-server deploy succeeded\n")
    assert "| deploy | 3.0 s | \u2705 |" in text
    assert "deploy failed" in text


def test_write_step_summary_without_the_variable_writes_nothing(tmp_path: Path) -> None:
    assert write_step_summary(_event(), env={}) is None
    assert write_step_summary(_event(), env={"GITHUB_STEP_SUMMARY": ""}) is None
    assert list(tmp_path.iterdir()) == []


def test_write_step_summary_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "missing-dir" / "summary.md"
    assert write_step_summary(_event(), env={"GITHUB_STEP_SUMMARY": str(target)}) is None
    assert "could not write the job summary" in caplog.text


APP_SECRET = "sk-abc123def456ghi789jkl"


def test_the_summary_never_shows_a_token_from_the_message() -> None:
    event = _event(
        outcome="failure",
        failed_phase="health",
        message=f"10.201.0.2: failed in health (OPENAI_API_KEY={APP_SECRET} rejected)",
    )
    summary = render_step_summary(event, {"deploy": 3.0, "health": 20.0})
    assert APP_SECRET not in summary
    assert "OPENAI_API_KEY=***" in summary
    assert "3f2a9c1" in summary and "10.201.0.2" in summary and "20.0 s" in summary


@pytest.mark.parametrize("env", [GHA, LOCAL])
def test_annotations_never_show_a_token(env: dict[str, str]) -> None:
    out = io.StringIO()
    error(
        f"app said: AKIAIOSFODNN7EXAMPLE and password={APP_SECRET}",
        "deploy failed",
        env=env,
        stream=out,
    )
    warning("xoxb-123456789012-abcdefABCDEF", env=env, stream=out)
    text = out.getvalue()
    assert "AKIAIOSFODNN7EXAMPLE" not in text and APP_SECRET not in text and "xoxb-" not in text
    assert "password=***" in text
