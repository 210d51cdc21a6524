"""The host's record of the last start that passed the gate (Layout.last_start): the names
another part reads, root's and 0644, replaced whole, and a failed write only said."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.release.laststart import Start, record_last_start

pytestmark = pytest.mark.unit


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        h.app_root.mkdir(parents=True)
        yield h


def test_the_record_has_exactly_the_names_a_plan_reads(host: FakeHost) -> None:
    record_last_start(host.remote, host.spec("r1"), Start("r1", "socket", 12.3456, 12.3456), 7.0)
    path = host.app_root / "last-start.json"
    assert host.spec().layout.last_start == str(path)
    assert json.loads(path.read_text()) == {
        "release": "r1",
        "strategy": "socket",
        "outage_s": 12.346,
        "start_s": 12.346,
        "at": 7.0,
    }
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0
    assert [p.name for p in host.app_root.iterdir()] == ["last-start.json"]  # no temp left


def test_blue_green_has_no_outage_and_a_new_start_replaces_the_old(host: FakeHost) -> None:
    path = host.app_root / "last-start.json"
    path.write_text("not json, and far longer than the record that replaces it " * 100)
    path.chmod(0o600)
    record_last_start(host.remote, host.spec("r2"), Start("r2", "bluegreen", None, 8.0), 9.5)
    assert json.loads(path.read_text())["outage_s"] is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_write_that_fails_is_said_and_never_raised(host: FakeHost) -> None:
    (host.app_root / "last-start.json.tmp").mkdir()  # the temporary file cannot be made
    record_last_start(host.remote, host.spec("r3"), Start("r3", "restart", 1.0, 1.0))
    assert not (host.app_root / "last-start.json").exists()
    assert any("could not record the start" in w for w in host.remote.warned)


def test_the_gate_line_says_the_outage_or_that_there_was_none() -> None:
    assert Start("r1", "socket", 12.34, 12.34).line().startswith("outage 12.3 s: ")
    assert Start("r1", "bluegreen", None, 8.04).line() == (
        "start 8.0 s: release r1 ready, no outage"
    )
