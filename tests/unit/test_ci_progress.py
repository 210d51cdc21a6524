"""What `ai-deploy` prints of a pyinfra run by default: each host's events, read from their own
descriptor beside pyinfra's output (a real child process writes both), changes grouped by task,
errors counted and redacted; pyinfra's stream instead with -v; how every command ends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ai_deploy.ci import flow
from ai_deploy.ci.options import DeployOptions
from ai_deploy.host.events import CHANGED, ERROR, SAY, WARN, HostEvent
from ai_deploy.report import output as ci_output
from ai_deploy.report import secretlike
from ai_deploy.report.notify import DeployEvent, Outcome
from ai_deploy.report.progress import HostProgress
from ai_deploy.rollout import pyinfra_run
from ai_deploy.rollout.report import HostResult
from ai_deploy.rollout.run import Outcome as RolloutOutcome

pytestmark = pytest.mark.unit

SECRET = "sk-abc123def456ghi789jkl"


@pytest.fixture(autouse=True)
def no_registered_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretlike, "_known", set())


def _printed(events: list[HostEvent]) -> tuple[list[str], HostProgress]:
    lines: list[str] = []
    progress = HostProgress(lines.append)
    for event in events:
        progress.feed(event)
    progress.flush()
    return lines, progress


def test_changes_in_a_row_are_one_line_per_task_and_host() -> None:
    ops = [HostEvent("a", CHANGED, f"Ensure dir {n}", "Layout") for n in range(5)]
    lines, progress = _printed(
        [
            *ops,
            HostEvent("a", CHANGED, "Ensure uv", "uv"),
            HostEvent("b", CHANGED, "Ensure uv", "uv"),
            HostEvent("a", SAY, "plan: release r1 goes live"),
            HostEvent("a", CHANGED, "Ensure release r1 serves", "Release"),
        ]
    )
    assert lines == [
        "[a] changed: Layout: 5 operations",
        "[a] changed: uv: Ensure uv",
        "[b] changed: uv: Ensure uv",
        "[a] plan: release r1 goes live",
        "[a] changed: Release: Ensure release r1 serves",
    ]
    assert progress.errors == 0


def test_warnings_and_errors_are_marked_counted_and_redacted_line_by_line() -> None:
    reason = f"health failed: no answer\nlast lines of error.log:\n    OPENAI_API_KEY={SECRET}"
    lines, progress = _printed(
        [HostEvent("a", WARN, "app_user can sudo"), HostEvent("a", ERROR, reason)]
    )
    assert lines == [
        "[a] warning: app_user can sudo",
        "[a] error: health failed: no answer",
        "[a] last lines of error.log:",
        "[a]     OPENAI_API_KEY=***",
    ]
    assert progress.errors == 1


def test_an_event_survives_json_and_anything_else_is_refused() -> None:
    event = HostEvent("web-1", CHANGED, "Ensure x", "Layout | odd")
    assert HostEvent.from_json(event.to_json()) == event
    for bad in ('{"kind": "shout", "host": "a"}', "[1, 2]", '"text"'):
        with pytest.raises(ValueError):
            HostEvent.from_json(bad)


_CHILD = textwrap.dedent(
    """
    import json, os, sys
    fd = int(os.environ["AI_DEPLOY_EVENTS_FD"])
    def event(kind, text, group=""):
        os.write(fd, (json.dumps({"host": "h", "kind": kind, "text": text, "group": group})
                      + "\\n").encode())
    print("--> Starting operation: one", flush=True)
    event("changed", "Ensure one", "Task")
    event("say", "x" * 200000)  # longer than any one read: put back together
    os.write(fd, b"not an event\\n")
    print("    Grand total  1  1  -  -", flush=True)
    event("error", "health failed: OPENAI_API_KEY=%s")
    sys.stdout.write("no newline at the end")
    """
)


def _child(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    events_in, events_out = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD % SECRET],
        env={**os.environ, "AI_DEPLOY_EVENTS_FD": str(events_out)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=(events_out,),
        cwd=tmp,
    )
    os.close(events_out)
    return proc, events_in


@pytest.mark.parametrize("verbose", [False, True])
def test_the_relay_prints_events_or_the_stream_never_both(
    verbose: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, events_in = _child(tmp_path)
    try:
        tail, errors = pyinfra_run._relay(proc, events_in, verbose)
    finally:
        os.close(events_in)
    assert proc.wait() == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert tail == [
        "--> Starting operation: one",
        "    Grand total  1  1  -  -",
        "no newline at the end",
    ]
    if verbose:
        assert out.splitlines() == tail
        assert errors == 0
    else:
        assert out.splitlines() == [
            "[h] changed: Task: Ensure one",
            "[h] " + "x" * 200000,
            "[h] error: health failed: OPENAI_API_KEY=***",
        ]
        assert errors == 1


def test_a_failed_run_shows_its_tail_only_when_nothing_said_why() -> None:
    tail = ["", "--> pyinfra error: deploy.py: invalid settings"]
    silent = pyinfra_run.PyinfraRun(1, tail, {}, explained=False)
    assert silent.unexplained_tail() == ["--> pyinfra error: deploy.py: invalid settings"]
    assert pyinfra_run.PyinfraRun(1, tail, {}, explained=True).unexplained_tail() == []
    assert pyinfra_run.PyinfraRun(0, tail, {}, explained=False).unexplained_tail() == []


def test_verbose_is_set_by_the_variable_a_ci_job_may_set() -> None:
    assert ci_output.verbose({"AI_DEPLOY_VERBOSE": "1"})
    assert ci_output.verbose({"AI_DEPLOY_VERBOSE": " TRUE "})
    assert not ci_output.verbose({"AI_DEPLOY_VERBOSE": "0"})
    assert not ci_output.verbose({})


def test_every_command_ends_with_the_phase_times_and_one_headline() -> None:
    event = DeployEvent(
        outcome=Outcome.FAILURE,
        release="r2",
        hosts=["a", "b"],
        duration_s=75.0,
        failed_phase="rollback",
        service="chat",
        action="rollback",
    )
    lines = ci_output.closing_lines(event, {"rollback": 74.6})
    assert lines == [
        "phases: rollback 1 min 15 s (failed)",
        "\u274c chat rollback failed: release r2 on 2 hosts in 1 min 15 s (failed phase: rollback)",
    ]
    ok = DeployEvent(outcome=Outcome.SUCCESS, release="r1", hosts=["a"], duration_s=3.0)
    assert ci_output.closing_lines(ok) == [
        "\u2705 ai-server deploy succeeded: release r1 on 1 host in 3.0 s"
    ]


def _failed_run(plan: bool) -> flow.Run:
    env = {"AI_DEPLOY_VERBOSE": "0"}
    opts = DeployOptions(artifact=Path("a.tar.gz"), plan=plan)
    run = flow.Run(opts, env, ci_output.Phases(env=env))
    run.release, run.hosts = "r2", ["a", "b"]
    results = [
        HostResult("a", "canary", "r1", "r1", "switched back"),
        HostResult("b", "batch 1", "r1", "r1"),
    ]
    run.fleet = RolloutOutcome(15, "a: switched-back in health", [], results)
    run.phases.fail("health")
    return run


def test_a_failed_rollout_says_its_error_once_and_its_table_nowhere_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _failed_run(plan=False)
    flow._report(
        run,
        Outcome.ROLLBACK,
        "a: switched-back in health",
        9.0,
        error_title="deploy failed (exit 15)",
    )
    captured = capsys.readouterr()
    both = captured.out + captured.err
    assert both.count("a: switched-back in health") == 1, both
    assert "canary" not in both  # the table was printed by the rollout itself
    assert captured.out.splitlines()[-1].startswith(
        "\u21a9\ufe0f ai-server deploy rolled back: release r2"
    )


def test_a_failed_plan_says_it_failed(capsys: pytest.CaptureFixture[str]) -> None:
    run = _failed_run(plan=True)
    flow._report(
        run, Outcome.FAILURE, "nosuch: not a host", 1.0, error_title="deploy failed (exit 2)"
    )
    out = capsys.readouterr().out
    assert "plan failed in 1.0 s" in out and "finished" not in out
