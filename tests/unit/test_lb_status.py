"""`status` shows the load-balancer state as the host answers lb_health_path, only with lb_drain."""

from __future__ import annotations

import pytest

from ai_deploy.commands import status
from ai_deploy.host.remote import Result

pytestmark = pytest.mark.unit


class Answering:
    def __init__(self, data: dict[str, object], answer: str) -> None:
        self.data, self.answer, self.scripts = data, answer, []

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        self.scripts.append(script)
        return Result(True, [self.answer], [])


def _line(report: dict[str, object] | None) -> list[str]:
    base: dict[str, object] = {
        "host": "web-1",
        "address": "10.0.0.5",
        "reachable": True,
        "healthy": True,
        "current": "r2",
        "previous": None,
        "releases": ["r2"],
        "service": {"unit": "u", "active": "active", "sub": "running", "enabled": "e", "pid": 1},
        "strategy": "restart",
        "health": {"code": 200, "body": "ok"},
        "lock_line": "free",
        "gpu": None,
        "revisions": [],
        "load_balancer": report,
    }
    return [line for line in status.render(base, 0) if line.startswith("  lb:")]


@pytest.mark.parametrize(
    ("answer", "state"),
    [("ok 200", "in service"), ("drained\n 503", "drained"), ("not ready\n 503", "not ready")],
)
def test_the_state_is_what_the_host_answers(answer: str, state: str) -> None:
    host = Answering({"lb_drain": True, "app_port": 8100}, answer)
    report = status.lb_report(host)  # type: ignore[arg-type]
    assert report is not None and report["state"] == state
    assert "http://127.0.0.1:8100/lb-health" in host.scripts[0]
    code = report["code"]
    assert _line(report) == [f"  lb:        {state} (/lb-health on port 8100: {code})"]


def test_nothing_is_asked_or_shown_without_lb_drain() -> None:
    host = Answering({"lb_drain": False}, "ok 200")
    assert status.lb_report(host) is None and host.scripts == []  # type: ignore[arg-type]
    assert _line(None) == []
