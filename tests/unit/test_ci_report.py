"""A failing deploy's reporting with an app secret in its reason: the flow's _report masks it
(::add-mask:: first) in the log and keeps it out of Slack, Discord and the job summary; the
rollout step's message carries host outcomes only, never their log lines, and the log tail it
prints is masked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ai_deploy.ci import flow
from ai_deploy.ci.context import Run
from ai_deploy.ci.fleet import masked_say
from ai_deploy.ci.options import DeployOptions
from ai_deploy.host.outcome import HostOutcome
from ai_deploy.report import output as ci_output
from ai_deploy.report import secretlike
from ai_deploy.report.notify import Outcome
from ai_deploy.rollout import run as rollout_run
from ai_deploy.rollout.fleetlock import Fleet
from ai_deploy.rollout.floor import Floor
from ai_deploy.rollout.plan import HostFacts
from ai_deploy.rollout.pyinfra_run import PyinfraRun
from ai_deploy.rollout.report import HostResult
from ai_deploy.rollout.run import Health, Rollout
from ai_deploy.rollout.run import Outcome as Outcome_

pytestmark = pytest.mark.unit

SECRET = "sk-abc123def456ghi789jkl"
LOG_LINE = "openai.AuthenticationError: Incorrect API key provided"


class Webhooks:
    """Slack and Discord incoming webhooks on loopback, recording each JSON body by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, Any] = {}
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                hooks.bodies[self.path] = json.loads(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def hooks() -> Iterator[Webhooks]:
    server = Webhooks()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(autouse=True)
def no_registered_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretlike, "_known", set())


def _run(tmp_path: Path, hooks: Webhooks) -> Run:
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/ai-server",
        "GITHUB_RUN_ID": "42",
        "AI_DEPLOY_SLACK_WEBHOOK_URL": hooks.url("/slack"),
        "AI_DEPLOY_DISCORD_WEBHOOK_URL": hooks.url("/discord"),
    }
    run = Run(DeployOptions(artifact=tmp_path / "a.tar.gz"), env, ci_output.Phases(env=env))
    run.release, run.hosts = "20260101-abc", ["10.0.0.5"]
    return run


def _everything_sent(hooks: Webhooks, tmp_path: Path) -> str:
    assert set(hooks.bodies) == {"/slack", "/discord"}
    return json.dumps(hooks.bodies) + (tmp_path / "summary.md").read_text()


def test_a_secret_in_the_failure_message_is_masked_and_sent_nowhere(
    tmp_path: Path, hooks: Webhooks, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(tmp_path, hooks)
    run.phases.fail("deploy")
    message = f"10.0.0.5: failed in health (app exited: OPENAI_API_KEY={SECRET} rejected)"
    flow._report(run, Outcome.FAILURE, message, 12.5, error_title="deploy failed (exit 14)")
    out = capsys.readouterr()
    log = out.out + out.err
    lines = log.splitlines()
    mask = lines.index(f"::add-mask::{SECRET}")
    assert all(SECRET not in line for line in lines[mask + 1 :])
    error = next(i for i, line in enumerate(lines) if line.startswith("::error "))
    assert mask < error
    assert "OPENAI_API_KEY=***" in lines[error]
    sent = _everything_sent(hooks, tmp_path)
    assert SECRET not in sent and "sk-abc" not in sent
    assert "OPENAI_API_KEY=***" in sent
    # what people need is still there: outcome, release, host, phase and the run's link
    for fact in ("20260101-abc", "10.0.0.5", "deploy", "https://github.com/acme/ai-server"):
        assert fact in sent


def _one_step(run: Run, result: PyinfraRun, monkeypatch: pytest.MonkeyPatch) -> str:
    """The rollout's step over host 10.0.0.5 with RESULT as its pyinfra run; its message."""
    facts = HostFacts("10.0.0.5", "10.0.0.5", 8000, "/health", "socket", current="old")
    rollout = Rollout(
        inventory="inventory.py",
        artifact=Path("a.tar.gz"),
        release=run.release,
        lock_hash="",
        data=[],
        env={},
        health=Health(1, 0.0, 1.0),
        say=masked_say(run),
    )
    out = Outcome_([], [], [], [HostResult("10.0.0.5", "batch 1", "old", "old")])
    monkeypatch.setattr(rollout_run, "run_pyinfra_streamed", lambda *a, **k: result)
    fleet = Fleet(facts={"10.0.0.5": facts})
    plan = ({}, Floor.of("1", 1))  # _step itself reads neither
    return rollout_run._Steps(rollout, fleet, out, 0.0, plan)._step(["10.0.0.5"])


def test_the_deploy_message_holds_outcomes_not_the_hosts_log_lines(
    tmp_path: Path,
    hooks: Webhooks,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _run(tmp_path, hooks)
    run.inventory = "inventory.py"
    reason = (
        "release 20260101-abc is not healthy: no answer within 60 s\n"
        f"last lines of error.log:\n    {LOG_LINE}\n    OPENAI_API_KEY={SECRET}"
    )
    outcome = HostOutcome(
        host="10.0.0.5",
        action="deploy",
        release="20260101-abc",
        status="switched-back",
        phase="health",
        reason=reason,
    )
    result = PyinfraRun(returncode=1, tail=[LOG_LINE], outcomes={"10.0.0.5": outcome})
    message = _one_step(run, result, monkeypatch)
    assert message == "10.0.0.5: switched-back in health"
    flow._report(run, Outcome.ROLLBACK, message, 30.0, error_title="deploy failed")
    sent = _everything_sent(hooks, tmp_path)
    assert LOG_LINE not in sent and SECRET not in sent
    assert "switched-back" in sent
    assert SECRET not in capsys.readouterr().out


def test_a_run_that_failed_before_any_host_reported_prints_its_tail_masked_in_the_log_only(
    tmp_path: Path,
    hooks: Webhooks,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _run(tmp_path, hooks)
    tail = ["Traceback (most recent call last):", f"KeyError: 'OPENAI_API_KEY={SECRET}'"]
    result = PyinfraRun(returncode=1, tail=tail, outcomes={}, explained=False)
    message = _one_step(run, result, monkeypatch)
    assert "Traceback" not in message and SECRET not in message
    assert "no outcome (pyinfra exit 1)" in message
    flow._report(run, Outcome.FAILURE, message, 3.0, error_title="deploy failed")
    log = capsys.readouterr().out
    lines = log.splitlines()
    assert lines.index(f"::add-mask::{SECRET}") < lines.index("Traceback (most recent call last):")
    assert "KeyError: 'OPENAI_API_KEY=***'" in lines
    sent = _everything_sent(hooks, tmp_path)
    assert "Traceback" not in sent and SECRET not in sent
