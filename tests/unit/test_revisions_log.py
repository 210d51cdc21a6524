"""revisions.log written through one function (ai_deploy.host.revisions.append_revision), with
its real shell on a temporary tree, and read back as the same values."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ai_deploy.host.paths import Layout
from ai_deploy.host.remote import Result
from ai_deploy.host.revisions import append_revision, parse_revisions, revisions_script

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


class ShellRemote:
    """Runs each script with `sh -c` in CWD."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        proc = subprocess.run(
            ["sh", "-c", script], cwd=self.cwd, capture_output=True, text=True, timeout=60
        )
        return Result(proc.returncode == 0, proc.stdout.splitlines(), proc.stderr.splitlines())

    def say(self, message: str) -> None:
        pass


def test_each_call_appends_one_line_that_reads_back_as_its_values(tmp_path: Path) -> None:
    root = tmp_path / "app root $(x)"
    root.mkdir()
    layout = Layout(str(root), "ai-server", str(tmp_path))
    remote = ShellRemote(tmp_path)
    hostile = 'reason=\'it\'"s" $(touch pwned) `touch pwned2` %s %n\\n\nholder={"a": 1}\r\nend'
    append_revision(remote, layout, "deploy", "r1", "ok", "me@box")
    append_revision(remote, layout, "lock-release", "-", "ok", "you@ci", hostile)
    text = (root / "revisions.log").read_text()
    assert text.count("\n") == 2
    assert not list(tmp_path.glob("pwned*"))
    first, second = parse_revisions(remote.run(revisions_script(layout)).stdout)
    assert (first.action, first.release, first.outcome, first.who, first.detail) == (
        "deploy", "r1", "ok", "me@box", ""
    )  # fmt: skip
    assert (second.action, second.release, second.who) == ("lock-release", "-", "you@ci")
    assert second.detail == re.sub(r"[\r\n]+", " ", hostile)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", second.when)
    # The last N lines only.
    assert remote.run(revisions_script(layout, 1)).stdout == text.splitlines()[-1:]


def test_no_other_module_writes_revisions_log() -> None:
    """The line's format and the append are used by append_revision alone."""
    writers = []
    for path in [*(ROOT / "ai_deploy").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]:
        text = path.read_text()
        if re.search(r"revisions_line\(|>>\s*\{[^}]*revisions\}", text):
            writers.append(str(path.relative_to(ROOT)))
    assert sorted(writers) == ["ai_deploy/host/paths.py", "ai_deploy/host/revisions.py"]
