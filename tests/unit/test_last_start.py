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


def last_start(host: FakeHost) -> dict[str, object]:
    return json.loads((host.app_root / "last-start.json").read_text())


def outage_lines(host: FakeHost) -> list[str]:
    return [s for s in host.remote.said if s.startswith(("outage ", "start "))]


@pytest.mark.parametrize("strategy", ["socket", "restart"])
def test_a_one_copy_switch_says_its_outage_and_records_it(strategy: str, tmp_path: Path) -> None:
    with FakeHost(tmp_path) as host:
        assert host.deploy("r1", strategy=strategy).status == "served"
        first = last_start(host)
        assert first["outage_s"] is None  # nothing served before the first start
        assert outage_lines(host) == [
            f"start {first['start_s']:.1f} s: release r1 ready, no outage"
        ]
        assert host.deploy("r2", strategy=strategy).status == "served"
        second = last_start(host)
        assert (second["release"], second["strategy"]) == ("r2", strategy)
        assert isinstance(second["outage_s"], float) and second["outage_s"] > 0
        assert second["outage_s"] == second["start_s"] and second["at"] >= first["at"]
        assert outage_lines(host)[-1] == (
            f"outage {second['outage_s']:.1f} s: from stopping the old process to release r2 "
            "passing readiness"
        )


def test_blue_green_records_its_start_and_no_outage(tmp_path: Path) -> None:
    with FakeHost(tmp_path) as host:
        assert host.deploy("r1", strategy="bluegreen").status == "served"
        assert host.deploy("r2", strategy="bluegreen").status == "served"
        record = last_start(host)
        assert (record["release"], record["strategy"], record["outage_s"]) == (
            "r2",
            "bluegreen",
            None,
        )
        assert isinstance(record["start_s"], float) and record["start_s"] > 0
        assert outage_lines(host)[-1].endswith("release r2 ready, no outage")


def test_a_release_switched_back_leaves_the_last_good_start(tmp_path: Path) -> None:
    with FakeHost(tmp_path) as host:
        assert host.deploy("r1").status == "served"
        assert host.deploy("r2").status == "served"
        before = (host.app_root / "last-start.json").read_bytes()
        assert host.deploy("r3", behaviour="crash").status == "switched-back"
        assert (host.app_root / "last-start.json").read_bytes() == before
