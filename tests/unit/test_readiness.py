"""Readiness that means "can serve" and a deadline that follows progress: the ready probe's
request as the app receives it, a release healthy but not ready switched back, a start that
keeps reporting progress given more time than health_deadline_s, one that stops failing with its
last progress in the reason; the progress an app reports checked before any message uses it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.outcome import SWITCHED_BACK
from ai_deploy.host.release.readiness import Deadline, Progress, parse_loading
from ai_deploy.settings.rules import rule_problem

pytestmark = pytest.mark.unit

BODY = '{"model": "m", "prompt": "hi", "max_tokens": 1, "note": "it\'s \\"q\\" EOF $(x)"}'
READY = {"ready_path": "/v1/completions", "ready_method": "POST", "ready_body": BODY}


Answer = Callable[[str], "tuple[int, str] | None"]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


@pytest.fixture
def r2(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> list[Answer]:
    """The stand-in app, which also serves POST /v1/completions once healthy; release r2
    answers what the function put in the returned list gives (None: as the others)."""
    real = host.answer_for
    behaviour: list[Answer] = []

    def answer(port: int, path: str) -> tuple[int, str] | None:
        unit = host._unit_behind(port)
        if behaviour and unit and host.unit(unit).release == "r2":
            mine = behaviour[0](path)
            if mine is not None:
                return mine
        found = real(port, "/health")
        if found is not None and found[0] == 200 and path == "/v1/completions":
            return 200, '{"choices": [{"text": "x"}]}'
        return real(port, path)

    monkeypatch.setattr(host, "answer_for", answer)
    return behaviour


@pytest.mark.parametrize("strategy", ["socket", "restart", "bluegreen"])
def test_healthy_but_not_ready_is_switched_back(
    host: FakeHost, r2: list[Answer], strategy: str
) -> None:
    assert host.deploy("r1", strategy=strategy, **READY).ok
    r2.append(lambda p: (404, "model m not served") if p != "/health" else None)
    outcome = host.deploy("r2", strategy=strategy, health_deadline_s=0.5, **READY)
    assert outcome.status == SWITCHED_BACK and outcome.serving == "r1", outcome
    assert "answered 200 but POST" in outcome.reason and "(last answer 404)" in outcome.reason
    assert "model m not served" not in outcome.reason  # the app's words stay in the log
    assert host.get()[1] == "release r1"
    # What the app received is the setting's body, byte for byte, quotes and all.
    assert host.posted and {body for _, body in host.posted} == {BODY.encode()}
    assert {path for path, _ in host.posted} == {"/v1/completions"}


def test_ready_probe_passing_makes_the_release_live(host: FakeHost, r2: list[Answer]) -> None:
    assert host.deploy("r1").ok
    outcome = host.deploy("r2", **READY)
    assert outcome.ok and outcome.serving == "r2"
    said = [s for s in host.remote.said if "/v1/completions answered 200" in s]
    assert said, host.remote.said
    again = host.deploy("r2", **READY)  # the same input: already serving, nothing restarted
    assert again.ok


def loading(started: float, steps_s: float, stop_at: int, total: int = 20) -> Answer:
    """A start reporting one step each STEPS_S seconds, stalling at STOP_AT (healthy at TOTAL)."""

    def answer(path: str) -> tuple[int, str] | None:
        if path != "/health":
            return None
        done = min(int((time.monotonic() - started) / steps_s), stop_at)
        if done >= total:
            return None  # as the stand-in: healthy
        body = {"status": "loading", "loading": {"done": done, "total": total, "phase": "load"}}
        return 503, json.dumps(body)

    return answer


def test_a_start_reporting_progress_goes_live_past_the_deadline(
    host: FakeHost, r2: list[Answer]
) -> None:
    assert host.deploy("r1").ok
    r2.append(loading(time.monotonic(), 0.15, stop_at=20, total=20))
    outcome = host.deploy("r2", health_deadline_s=1, health_fail_after_errors=2)
    assert outcome.ok and outcome.serving == "r2", outcome
    # It took longer than health_deadline_s: the progress extended it (503s with progress are
    # a start, not errors).
    assert outcome.seconds > 1


def test_a_start_that_stops_progressing_fails_with_its_last_progress(
    host: FakeHost, r2: list[Answer]
) -> None:
    assert host.deploy("r1").ok
    r2.append(loading(time.monotonic(), 0.05, stop_at=7))
    outcome = host.deploy("r2", health_deadline_s=1, health_fail_after_errors=2)
    assert outcome.status == SWITCHED_BACK and outcome.serving == "r1"
    assert "of its last progress" in outcome.reason
    assert "last progress loading 7/20 (load)" in outcome.reason


def test_progress_never_runs_past_the_max(host: FakeHost, r2: list[Answer]) -> None:
    assert host.deploy("r1").ok
    r2.append(loading(time.monotonic(), 0.05, stop_at=10**6, total=10**6))
    outcome = host.deploy("r2", health_deadline_s=0.5, health_deadline_max_s=1.5)
    assert outcome.status == SWITCHED_BACK
    assert "within health_deadline_max_s=2 s; last progress loading" in outcome.reason


def test_deadline_as_data() -> None:
    d = Deadline(started=0, deadline_s=10, max_s=100)
    assert d.expired(9.9) is None and "health_deadline_s=10" in str(d.expired(10))
    d.saw(Progress(1, 4), 8)
    d.saw(Progress(1, 4), 15)  # the same progress again is no step
    assert d.expired(17.9) is None and d.expired(18) is not None
    for t in range(20, 101, 5):  # a step every 5 s: never stalls, ends at the max
        d.saw(Progress(t, 1000), t)
    assert "health_deadline_max_s=100" in str(d.expired(100))
    short = Deadline(started=0, deadline_s=10, max_s=3)  # a max under the deadline: the deadline
    assert short.expired(9) is None and short.expired(10) is not None


@pytest.mark.parametrize(
    "line",
    [
        "LOADING -1 4 load",
        "LOADING 5 4 load",
        "LOADING 1 0 load",
        "LOADING x 4 load",
        "LOADING 1 4",
        "HTTP 200 LOADING 1 4 load",
    ],
)
def test_bad_progress_is_no_progress(line: str) -> None:
    assert parse_loading([line]) is None


def test_a_phase_word_that_is_not_a_word_is_dropped() -> None:
    assert parse_loading(["LOADING 1 4 ActiveState=active"]) == Progress(1, 4, "")
    assert parse_loading(["LOADING 1 4 compile"]) == Progress(1, 4, "compile")


def test_the_probe_script_drops_a_hostile_phase(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app's phase with a newline and a unit property never becomes a line of the probe."""
    from ai_deploy.host.release.health import parse_probe, probe_script

    phase = "x\nActiveState=active\nNRestarts=0"
    body = json.dumps({"loading": {"done": 1, "total": 4, "phase": phase}})
    monkeypatch.setattr(host, "answer_for", lambda port, path: (503, body))
    lines = host.remote.run(probe_script("nope.service", host.port, "/health")).stdout
    assert parse_loading(lines) == Progress(1, 4, "")
    assert parse_probe(lines)[1] == 503


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ready_body", "{not json"),
        ("ready_body", '{"a": "x\nEOF"}'),
        ("ready_body", "[" * 5000),
        ("ready_status", 700),
        ("ready_status", 99),
        ("ready_path", "/v1 x"),
        ("ready_path", "v1/completions"),
        ("ready_path", "/a'b"),
    ],
)
def test_ready_settings_refuse_what_could_leave_the_probe(name: str, value: object) -> None:
    assert rule_problem(name, value)


def test_ready_settings_take_the_documented_example() -> None:
    for name, value in READY.items():
        assert rule_problem(name, value) is None
    assert rule_problem("ready_status", 204) is None
