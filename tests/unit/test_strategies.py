"""The deploy strategies (ai_deploy.host.strategies): blue/green routing behind the health gate,
moving a host from one strategy to another, and each one's steady state as data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host import strategies
from ai_deploy.host.facts import AppTree
from ai_deploy.host.outcome import FAILED, SERVED, SWITCHED_BACK
from ai_deploy.host.paths import Layout

pytestmark = pytest.mark.unit

SERVICE = "ai-server.service"
SOCKET = "ai-server.socket"
BLUE = "ai-server@blue.service"
GREEN = "ai-server@green.service"
NGINX = "nginx.service"
LAYOUT = Layout("/app/ai-server", "ai-server", "/var/log/x")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


def upstream(host: FakeHost) -> Path:
    return host.etc(str(host.data()["bluegreen_upstream"]))


def unit_file(host: FakeHost, unit: str) -> Path:
    return host.etc(LAYOUT.unit_file(unit))


def steady(host: FakeHost) -> list[str]:
    """The strategies whose steady state the host's real tree is in."""
    tree = host.tree()
    return [n for n, s in strategies.STRATEGIES.items() if s.is_steady(tree, host.layout)]


# --- blue/green ---


def test_bluegreen_healthy_colour_is_routed(host: FakeHost) -> None:
    blue_port, green_port = host.colour_ports
    first = host.deploy("r1", strategy="bluegreen")
    assert first.status == SERVED
    assert upstream(host).read_text() == f"server 127.0.0.1:{blue_port};\n"
    assert host.get() == (200, "release r1")
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.serving, outcome.previous) == (SERVED, "r2", "r1")
    assert upstream(host).read_text() == f"server 127.0.0.1:{green_port};\n"
    assert sorted(p.name for p in upstream(host).parent.iterdir()) == [
        upstream(host).name,
        "sites-available",
        "sites-enabled",
    ]  # nothing staged is left beside it
    assert (host.app_root / "colors" / "LIVE").read_text() == "green\n"
    assert host.get() == (200, "release r2")
    assert host.unit(GREEN).active == "active" and host.unit(GREEN).enabled
    assert host.unit(BLUE).active == "inactive" and not host.unit(BLUE).enabled  # drained
    assert host.unit(NGINX).active == "active" and host.unit(NGINX).enabled
    assert (host.link("current"), host.link("previous")) == ("r2", "r1")
    assert (host.link("colors/green"), host.link("colors/blue")) == ("r2", "r1")
    assert host.journal()[-1].endswith("previous=r1 colour=green")
    assert steady(host) == ["bluegreen"]


def test_bluegreen_unhealthy_colour_is_never_routed(host: FakeHost) -> None:
    host.deploy("r1", strategy="bluegreen")
    routed = upstream(host).read_bytes()
    blue_pid = (host.state / "units" / BLUE / "pid").read_text()
    reloads = host.state / "units" / NGINX / "reloads"
    outcome = host.deploy("r2", strategy="bluegreen", behaviour="unhealthy")
    assert (outcome.status, outcome.phase, outcome.serving) == (SWITCHED_BACK, "health", "r1")
    assert "it never received traffic and r1 keeps serving" in outcome.reason
    assert upstream(host).read_bytes() == routed
    assert not reloads.exists()  # nginx was never told anything
    assert (host.state / "units" / BLUE / "pid").read_text() == blue_pid  # blue untouched
    assert host.unit(GREEN).active == "inactive"
    assert (host.app_root / "colors" / "LIVE").read_text() == "blue\n"
    assert host.get() == (200, "release r1")
    assert (host.link("current"), host.link("previous")) == ("r1", None)
    assert "never-in-service colour=green" in host.journal()[-1]
    assert steady(host) == ["bluegreen"]


def test_bluegreen_first_deploy_unhealthy_leaves_nginx_off(host: FakeHost) -> None:
    outcome = host.deploy("r1", strategy="bluegreen", behaviour="crash")
    assert (outcome.status, outcome.serving) == (FAILED, None)
    assert "nothing was serving" in outcome.reason
    assert not host.etc(LAYOUT.nginx_site).is_symlink()
    assert host.unit(NGINX).active == "inactive" and not host.unit(NGINX).enabled
    assert host.unit(BLUE).active == "inactive"
    assert host.get() == (0, "")


def test_bluegreen_config_refused_by_nginx_leaves_the_live_colour_alone(host: FakeHost) -> None:
    host.deploy("r1", strategy="bluegreen")
    routed = upstream(host).read_bytes()
    (host.state / "nginx.fail").touch()
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.phase) == (FAILED, "switch")
    assert "configuration test failed" in outcome.reason
    # Not even nginx's next reload may send traffic to green: its upstream file is as it was.
    assert upstream(host).read_bytes() == routed
    assert not upstream(host).with_name(upstream(host).name + ".prev").exists()
    assert host.unit(GREEN).active == "inactive"
    assert (host.app_root / "colors" / "LIVE").read_text() == "blue\n"
    assert host.link("current") == "r1"
    assert host.get() == (200, "release r1")


def test_first_switch_to_bluegreen_refused_by_nginx_keeps_the_old_service(
    host: FakeHost,
) -> None:
    host.deploy("r1", strategy="socket")
    (host.state / "nginx.fail").touch()
    outcome = host.deploy("r2", strategy="bluegreen")
    assert (outcome.status, outcome.phase) == (FAILED, "switch")
    assert host.get() == (200, "release r1")
    assert host.unit(SOCKET).active == "active" and unit_file(host, SOCKET).exists()
    assert host.unit(SERVICE).active == "active" and unit_file(host, SERVICE).exists()
    assert not host.etc(LAYOUT.nginx_site).exists()
    assert host.unit(BLUE).active == "inactive"
    assert host.link("current") == "r1"


# --- moving between strategies ---


def test_switch_restart_to_socket_enables_the_socket(host: FakeHost) -> None:
    host.deploy("r1", strategy="restart")
    assert not unit_file(host, SOCKET).exists()
    assert steady(host) == ["restart"]
    outcome = host.deploy("r2", strategy="socket")
    assert outcome.status == SERVED
    assert host.unit(SOCKET).active == "active" and host.unit(SOCKET).enabled
    # The service is started by its socket now, not at boot on its own.
    assert host.unit(SERVICE).active == "active" and not host.unit(SERVICE).enabled
    assert host.unit(SERVICE).release == "r2"
    assert host.get() == (200, "release r2")
    assert steady(host) == ["socket"]


def test_switch_socket_to_restart_removes_the_socket_unit(host: FakeHost) -> None:
    host.deploy("r1", strategy="socket")
    assert unit_file(host, SOCKET).exists()
    outcome = host.deploy("r2", strategy="restart")
    assert outcome.status == SERVED
    assert not unit_file(host, SOCKET).exists()
    assert host.unit(SOCKET).active == "inactive" and not host.unit(SOCKET).enabled
    assert host.unit(SERVICE).active == "active" and host.unit(SERVICE).enabled
    assert unit_file(host, SERVICE).exists()
    assert host.get() == (200, "release r2")
    assert steady(host) == ["restart"]


def test_switch_in_place_to_bluegreen_removes_the_in_place_units(host: FakeHost) -> None:
    host.deploy("r1", strategy="socket")
    outcome = host.deploy("r2", strategy="bluegreen")
    assert outcome.status == SERVED
    for unit in (SERVICE, SOCKET):
        assert not unit_file(host, unit).exists(), unit
        assert host.unit(unit).active == "inactive" and not host.unit(unit).enabled, unit
    assert host.unit(BLUE).active == "active" and host.unit(NGINX).active == "active"
    assert host.get() == (200, "release r2")  # through nginx, from blue
    assert steady(host) == ["bluegreen"]


def test_switch_bluegreen_to_socket_takes_our_site_out_of_nginx(host: FakeHost) -> None:
    host.deploy("r1", strategy="bluegreen")
    outcome = host.deploy("r2", strategy="socket")
    assert outcome.status == SERVED
    assert not host.etc(LAYOUT.nginx_site).exists()
    assert host.unit(NGINX).active == "inactive" and not host.unit(NGINX).enabled
    assert host.unit(BLUE).active == "inactive" and not host.unit(BLUE).enabled
    assert not (host.app_root / "colors" / "LIVE").exists()
    assert host.get() == (200, "release r2")
    assert steady(host) == ["socket"]


def test_leaving_a_strategy_the_host_never_ran_changes_nothing(host: FakeHost) -> None:
    spec = host.spec()
    for strategy in strategies.STRATEGIES.values():
        assert strategy.leave(host.remote, spec, set()) is False, strategy.name
    assert list((host.state / "units").iterdir()) == []  # no unit was touched


def test_an_unknown_strategy_is_named() -> None:
    with pytest.raises(strategies.UnknownStrategy, match="'rolling' is not one of socket"):
        strategies.get("rolling")


# --- steady states, as data ---


def tree(units: dict[str, str], *, live: str | None = None, site: bool = False) -> AppTree:
    return AppTree(current="r1", releases=["r1"], units=units, live=live, nginx_site=site)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("fresh host", tree({}), set()),
        ("restart", tree({SERVICE: "active", SOCKET: "inactive"}), {"restart"}),
        ("socket", tree({SERVICE: "active", SOCKET: "active"}), {"socket"}),
        ("socket, service down", tree({SERVICE: "failed", SOCKET: "active"}), set()),
        (
            "restart with our site left in nginx",
            tree({SERVICE: "active"}, site=True),
            set(),
        ),
        (
            "bluegreen",
            tree({GREEN: "active", NGINX: "active"}, live="green", site=True),
            {"bluegreen"},
        ),
        (
            "bluegreen, live colour down",
            tree({BLUE: "active", GREEN: "failed", NGINX: "active"}, live="green", site=True),
            set(),
        ),
        (
            "bluegreen, nginx down",
            tree({GREEN: "active", NGINX: "inactive"}, live="green", site=True),
            set(),
        ),
        (
            "bluegreen, in-place service still up",
            tree({GREEN: "active", NGINX: "active", SERVICE: "active"}, live="green", site=True),
            set(),
        ),
        ("bluegreen, no live colour", tree({NGINX: "active"}, site=True), set()),
    ],
)
def test_is_steady(name: str, data: AppTree, expected: set[str]) -> None:
    found = {n for n, s in strategies.STRATEGIES.items() if s.is_steady(data, LAYOUT)}
    assert found == expected, name
