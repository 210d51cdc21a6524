"""The load-balancer settings: defaults, value rules (lb_health_path is rendered into nginx's
`location =`, so nothing nginx reads as syntax passes) and what the Spec reads."""

from __future__ import annotations

import pytest

from ai_deploy.host.settings import Spec
from ai_deploy.settings.check import check_values

pytestmark = pytest.mark.unit


def _problems(name: str, value: object) -> list[str]:
    return check_values("--data", {name: value})


def test_the_defaults_drain_nothing_and_answer_on_app_port() -> None:
    spec = Spec.from_data({})
    assert spec.lb_drain is False
    assert (spec.lb_health_path, spec.lb_health_port) == ("/lb-health", spec.port)
    assert spec.lb_drain_wait_s == 12
    assert spec.lb_upstream_port == spec.port + 10_000


def test_set_values_reach_the_spec() -> None:
    spec = Spec.from_data(
        {
            "lb_drain": "true",
            "app_port": 8100,
            "lb_health_port": 9100,
            "lb_drain_wait_s": 2.5,
            "lb_upstream_port": 18999,
        }
    )
    assert spec.lb_drain and spec.lb_health_port == 9100 and spec.lb_upstream_port == 18999
    assert spec.lb_drain_wait_s == 2.5
    assert Spec.from_data({"app_port": 8100}).lb_health_port == 8100


@pytest.mark.parametrize(
    "value",
    [
        "lb-health",
        "/lb-health;include /etc/passwd",
        "/lb health",
        "/lb-health{",
        "/a/../b",
        "/a//b",
        "/lb-health\nreturn 200",
        "/$host",
        "/x'y",
    ],
)
def test_lb_health_path_refuses_what_nginx_would_read(value: str) -> None:
    (problem,) = _problems("lb_health_path", value)
    assert "lb_health_path: expected a URL path of letters, digits" in problem


@pytest.mark.parametrize("name", ["lb_health_port", "lb_upstream_port"])
@pytest.mark.parametrize("value", [0, 65_536, -1])
def test_ports_are_tcp_ports(name: str, value: int) -> None:
    (problem,) = _problems(name, value)
    assert "a TCP port from 1 to 65535" in problem


@pytest.mark.parametrize("value", [-1, 3601])
def test_the_drain_wait_is_bounded(value: float) -> None:
    (problem,) = _problems("lb_drain_wait_s", value)
    assert "seconds from 0 to 3600" in problem


def test_ordinary_values_pass() -> None:
    good = {
        "lb_drain": True,
        "lb_health_path": "/healthz/lb-v1.2",
        "lb_health_port": 8080,
        "lb_drain_wait_s": 0.5,
        "lb_upstream_port": 18000,
    }
    assert check_values("--data", good) == []
    assert _problems("lb_health_port", "eighty")  # the kind is checked first
