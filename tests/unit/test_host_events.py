"""Host events sent from inside a real pyinfra run (`pyinfra @local`, a deploy file written
here): an operation that changed the host is one CHANGED event under its task, one that changed
nothing is none, a failed one is an ERROR with its output's last lines unless the host's failure
was already said, and a reader that went away never stops the deploy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ai_deploy.host.events import CHANGED, ERROR, EVENTS_FD_ENV, SAY, HostEvent

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

_HEAD = """
from pyinfra import host, state
from pyinfra.api import deploy
from pyinfra.operations import files, server

from ai_deploy.host.event_hooks import ERROR, send_events, tell

send_events(state)
"""


def _pyinfra(tmp_path: Path, body: str, *, reader: bool = True) -> tuple[int, str, list[HostEvent]]:
    (tmp_path / "deploy.py").write_text(_HEAD + textwrap.dedent(body))
    events_in, events_out = os.pipe()
    if not reader:
        os.close(events_in)
    env = {**os.environ, EVENTS_FD_ENV: str(events_out), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "@local", "deploy.py"],
        cwd=tmp_path,
        env=env,
        pass_fds=(events_out,),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=120,
    )
    os.close(events_out)
    if not reader:
        return proc.returncode, proc.stdout, []
    with os.fdopen(events_in, "rb") as stream:
        sent = [HostEvent.from_json(line.decode()) for line in stream.read().splitlines()]
    return proc.returncode, proc.stdout, sent


def test_changes_are_sent_per_operation_and_a_silent_failure_with_its_output(
    tmp_path: Path,
) -> None:
    code, out, sent = _pyinfra(
        tmp_path,
        """
        @deploy("Task one")
        def task_one():
            server.shell(name="Run true", commands=["true"])
            files.directory(name="Ensure the directory exists", path=".", present=True)
            server.shell(name="Run true again", commands=["true"])

        task_one()
        tell(host, "plan: one task, then a failure")
        server.shell(name="Fail loudly", commands=["echo out-line; echo boom-line >&2; exit 3"])
        server.shell(name="Never run", commands=["true"])
        """,
    )
    assert code == 1, out
    assert sent == [
        HostEvent("@local", SAY, "plan: one task, then a failure"),
        HostEvent("@local", CHANGED, "Run true", "Task one"),
        HostEvent("@local", CHANGED, "Run true again", "Task one"),
        HostEvent("@local", ERROR, "Fail loudly: failed\n    boom-line"),
    ]
    assert "plan: one task, then a failure" in out  # pyinfra's own stream says it too


def test_a_failure_already_said_is_not_said_again(tmp_path: Path) -> None:
    code, out, sent = _pyinfra(
        tmp_path,
        """
        tell(host, "health failed: the release crashed\\nlast lines:\\n  Traceback", ERROR)
        server.shell(name="Put the release in service", commands=["exit 1"])
        """,
    )
    assert code == 1, out
    assert [e.kind for e in sent] == [ERROR]
    assert sent[0].text.splitlines() == [
        "health failed: the release crashed",
        "last lines:",
        "  Traceback",
    ]


def test_a_reader_that_went_away_never_stops_the_deploy(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code, out, _ = _pyinfra(
        tmp_path,
        f"""
        tell(host, "nobody listens")
        server.shell(name="Run true", commands=["true"])
        server.shell(name="Leave a mark", commands=["touch {marker}"])
        """,
        reader=False,
    )
    assert code == 0, out
    assert marker.exists()
