"""The drain sequence as data: what the host answered in, the commands, waits and lines out.
A host in service is drained and waited for (lb_drain_wait_s, then its requests in flight); one
the load balancer already sees down is not waited for; put back clears the flag and waits; with
lb_drain off nothing at all is run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ai_deploy.host.lbdrain import (
    DRAINED,
    IN_SERVICE,
    NOT_READY,
    flag_text,
    parse_lb_health,
    put_back,
    take_out,
    undrain_script,
)
from ai_deploy.host.remote import Result
from ai_deploy.host.settings import Spec

pytestmark = pytest.mark.unit
FLAG = "/run/ai-server.lb-drained"
WRITE_FLAG = f"printf '%s\\n' drained > {FLAG}"  # no rollout: the flag names none


class ScriptedHost:
    """Answers lb_health_path with ANSWERS in turn and `ss` with CONNECTIONS in turn."""

    def __init__(self, answers: list[str], connections: list[int]) -> None:
        self.answers, self.connections = answers, connections
        self.scripts: list[str] = []
        self.said: list[str] = []

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        self.scripts.append(script)
        if script.startswith("curl"):
            return Result(True, [self.answers.pop(0)], [])
        if script.startswith("ss "):
            count = self.connections.pop(0) if len(self.connections) > 1 else self.connections[0]
            return Result(
                True, [f"ESTAB 0 0 127.0.0.1:18000 127.0.0.1:{40000 + i}" for i in range(count)], []
            )
        return Result(True, [], [])

    def say(self, message: str) -> None:
        self.said.append(message)

    def warn(self, message: str) -> None:
        self.said.append(f"WARN {message}")


def _spec(**data: object) -> Spec:
    return Spec.from_data({"lb_drain": True, "lb_drain_wait_s": 12, **data})


def test_the_health_answer_is_read_as_a_state() -> None:
    assert parse_lb_health(['{"status":"ok"} 200']) == (200, IN_SERVICE)
    assert parse_lb_health(["drained\n 503"]) == (503, DRAINED)
    assert parse_lb_health(["not ready\n 503"]) == (503, NOT_READY)
    assert parse_lb_health([" 000"]) == (0, NOT_READY)
    assert parse_lb_health([]) == (0, NOT_READY)
    assert parse_lb_health(["<html>404</html> 404"]) == (404, NOT_READY)


def test_a_host_in_service_is_drained_waited_for_and_its_requests_finish() -> None:
    host, slept = ScriptedHost(["ok 200"], [2, 2, 1, 0]), []
    taken = take_out(host, _spec(), 18000, sleep=slept.append)
    assert taken is not None and taken.was_in_service
    assert WRITE_FLAG in host.scripts
    assert slept == [12.0, 0.5, 0.5, 0.5]  # the wait, then one look per 0.5 s
    assert host.said[0] == "drained from the load balancer; waiting 12 s"
    assert taken.in_flight is not None and taken.in_flight.open_at_switch == 2
    assert taken.in_flight.still_open == 0
    assert host.said[1].startswith("2 request(s) in flight, finished in ")
    # The flag is set before the wait and the count: the load balancer is told first.
    flag_at = host.scripts.index(WRITE_FLAG)
    assert all(not s.startswith("ss ") for s in host.scripts[:flag_at])


def test_under_a_rollout_the_flag_names_its_lock_token() -> None:
    host = ScriptedHost(["ok 200"], [0])
    spec = _spec().with_run(lock_token="rollout-0123abcd")  # as deploy.py passes it
    take_out(host, spec, 18000, sleep=lambda _: None)
    assert f"printf '%s\\n' 'drained by rollout-0123abcd' > {FLAG}" in host.scripts


@pytest.mark.parametrize(
    ("content", "cleared"),
    [
        ("drained by rollout-aa11", True),  # this rollout's
        ("drained by rollout-bb22", False),  # another rollout's
        ("drained", False),  # a drain without a rollout (a plain pyinfra run)
        ("drained by rollout-aa11 and more", False),
        (None, False),  # no flag: nothing to do
    ],
)
def test_a_stopped_rollout_clears_only_its_own_drain(
    tmp_path: Path, content: str | None, cleared: bool
) -> None:
    flag = tmp_path / "ai-server.lb-drained"
    if content is not None:
        flag.write_text(content + "\n")  # as take_out's printf writes it
    out = subprocess.run(
        ["bash", "-c", undrain_script(str(flag), "rollout-aa11")], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert (out.stdout.strip() == "UNDRAINED") is cleared
    assert flag.exists() is (content is not None and not cleared)
    assert flag_text("rollout-aa11") == "drained by rollout-aa11" and flag_text(None) == "drained"


def test_a_host_the_load_balancer_sees_down_is_not_waited_for() -> None:
    host, slept = ScriptedHost(["not ready 503"], [0]), []
    taken = take_out(host, _spec(), 18000, sleep=slept.append)
    assert taken is not None and not taken.was_in_service and slept == []
    assert "it was not in service: /lb-health answered 503" in host.said[0]
    assert host.said[1] == "no request in flight"


def test_put_back_clears_the_flag_then_waits() -> None:
    host, slept = ScriptedHost(["ok 200"], [0]), []
    put_back(host, _spec(lb_drain_wait_s=4.5), sleep=slept.append)
    assert host.scripts[0] == f"rm -f {FLAG}"
    assert slept == [4.5] and host.said == ["back in service after 4.5 s"]


def test_put_back_says_when_the_host_still_does_not_answer_200() -> None:
    host, slept = ScriptedHost(["not ready 503"], [0]), []
    put_back(host, _spec(), sleep=slept.append)
    assert host.said[0].startswith("WARN /lb-health answers 503 after the drain was cleared")


def test_lb_drain_off_runs_nothing() -> None:
    host, slept = ScriptedHost([], [0]), []
    assert take_out(host, _spec(lb_drain=False), 8000, sleep=slept.append) is None
    put_back(host, _spec(lb_drain=False), sleep=slept.append)
    assert host.scripts == [] and slept == [] and host.said == []


@pytest.mark.parametrize(
    ("app_host", "where"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("10.0.0.7", "10.0.0.7"),
        ("fd00::7", "[fd00::7]"),
    ],
)
def test_the_host_asks_nginx_where_it_listens(app_host: str, where: str) -> None:
    host = ScriptedHost(["ok 200"], [0])
    put_back(host, _spec(app_host=app_host), sleep=lambda _: None)
    assert f"http://{where}:8000/lb-health" in host.scripts[1]
