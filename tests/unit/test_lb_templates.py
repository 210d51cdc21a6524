"""With lb_drain the nginx site answers lb_health_path (drained flag first, then the app's
health_path with every failure mapped to 503), keeps streams unbuffered and idle connections
past a GCP backend service's 600 s; the units' uvicorn keeps them as long. Without it, the site
and the units are what they were."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest

from ai_deploy.host.paths import LB_FRONT_MARK
from ai_deploy.host.strategies import front, restart, socket
from ai_deploy.host.strategies.nginx import LB_KEEP_ALIVE_S, site_values
from ai_deploy.project import group_data_defaults, template

pytestmark = pytest.mark.unit


def _data(**over: Any) -> SimpleNamespace:
    values = dict(group_data_defaults())
    values.update(
        app_root="/app/ai-server",
        app_log_dir="/var/log/ai-server",
        bluegreen_upstream="/etc/nginx/ai-server-upstream.conf",
    )
    values.update(over)
    return SimpleNamespace(**values)


def _site(data: SimpleNamespace, front_port: int | None) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = Path(template("ai-server.nginx.j2")).read_text()
    return env.from_string(text).render(**site_values(data, front=front_port))


def test_lb_off_leaves_the_blue_green_site_as_it_was() -> None:
    site = _site(_data(), None)
    assert "keepalive 32;" in site and "include /etc/nginx/ai-server-upstream.conf;" in site
    for word in ("lb", "keepalive_timeout", "proxy_buffering", "drained", LB_FRONT_MARK):
        assert word not in site


def test_the_front_proxies_to_loopback_and_answers_the_health_path() -> None:
    data = _data(lb_drain=True, deploy_strategy="restart")
    site = _site(data, front.listen(data)[1])
    assert site.startswith("# Rendered") and f"\n{LB_FRONT_MARK}" in site
    assert "server 127.0.0.1:18000;" in site and "keepalive 32" not in site
    assert f"keepalive_timeout {LB_KEEP_ALIVE_S}s;" in site and LB_KEEP_ALIVE_S > 600
    assert "proxy_buffering off;" in site and "proxy_request_buffering off;" in site
    assert "proxy_read_timeout 315s;" in site  # drain_timeout_s 300 + the stop margin
    location = site[site.index("location = /lb-health {") :]
    # The drain flag is tested before anything is proxied; failures of the app are 503.
    assert location.index("if (-f /run/ai-server.lb-drained)") < location.index("proxy_pass")
    assert "proxy_pass http://ai-server/health;" in location
    assert "proxy_intercept_errors on;" in location
    codes = {int(c) for c in re.findall(r"\b([3-5]\d\d)\b", location.split("@lb_not_ready {")[0])}
    assert {404, 500, 502, 503, 504} <= codes
    assert 'return 503 "not ready\\n";' in location
    assert site.count("listen ") == 1


def test_another_health_port_gets_its_own_server_with_only_that_path() -> None:
    site = _site(_data(lb_drain=True, lb_health_port=9000), None)
    assert "listen 0.0.0.0:8000;" in site and "listen 0.0.0.0:9000;" in site
    second = site[site.index("listen 0.0.0.0:9000;") :]
    assert "location = /lb-health {" in second and "return 404;" in second
    assert "include /etc/nginx/ai-server-upstream.conf;" in site  # blue/green keeps its upstream


def test_a_health_path_nginx_would_read_as_syntax_is_refused() -> None:
    with pytest.raises(ValueError, match="health_path '/health;return 200' cannot be proxied"):
        site_values(_data(lb_drain=True, health_path="/health;return 200"), front=None)


def test_the_units_listen_behind_the_front_only_with_lb_drain() -> None:
    (plain,) = restart.unit_files(_data())
    assert (plain.context["host"], plain.context["port"]) == ("0.0.0.0", 8000)
    (lb,) = restart.unit_files(_data(lb_drain=True, lb_upstream_port=18100))
    assert (lb.context["host"], lb.context["port"]) == ("127.0.0.1", 18100)
    assert socket.unit_files(_data())[1].context["listen"] == "0.0.0.0:8000"
    assert socket.unit_files(_data(lb_drain=True))[1].context["listen"] == "127.0.0.1:18000"


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"app_port": 60000}, r"127\.0\.0\.1:70000 \(app_port \+ 10000\), which is past 65535"),
        ({"lb_upstream_port": 8000}, r":8000 \(lb_upstream_port\), which is a port nginx"),
        ({"lb_health_port": 9000, "lb_upstream_port": 9000}, r":9000 .* nginx's front listens"),
    ],
)
def test_an_upstream_port_the_app_cannot_have_is_refused_with_the_fix(
    over: dict[str, int], why: str
) -> None:
    with pytest.raises(ValueError, match=why) as raised:
        front.listen(_data(lb_drain=True, **over))
    assert "set lb_upstream_port to a free port from 1 to 65535" in str(raised.value)
    assert front.listen(_data(**over))[0] == "0.0.0.0"  # without lb_drain it is never used


@pytest.mark.parametrize("name", ["ai-server.service.j2", "ai-server@.service.j2"])
def test_uvicorn_keeps_idle_connections_past_the_load_balancer_only_with_lb_drain(
    name: str,
) -> None:
    text = Path(template(name)).read_text()
    values = dict(
        module="main:app", app_root="/a", graceful_shutdown_s=300, host="h", port=1, socket=False
    )
    on = jinja2.Template(text).render(**values, keep_alive_s=LB_KEEP_ALIVE_S)
    off = jinja2.Template(text).render(**values, keep_alive_s=None)
    assert f"--timeout-graceful-shutdown 300 --timeout-keep-alive {LB_KEEP_ALIVE_S}\n" in on
    assert "--timeout-keep-alive" not in off and "--timeout-graceful-shutdown 300\n" in off


def test_a_changed_site_is_reloaded_only_where_nginx_serves_it() -> None:
    import subprocess

    from ai_deploy.host.paths import Layout
    from ai_deploy.host.strategies.nginx import reload_if_served

    script = reload_if_served(Layout.from_data(_data()))
    assert "readlink /etc/nginx/sites-enabled/ai-server" in script
    assert "= ../sites-available/ai-server ]" in script
    assert "systemctl is-active --quiet nginx; then nginx -t -q && systemctl reload nginx" in script
    # Where the site is not enabled the shell does nothing and succeeds.
    assert subprocess.run(["sh", "-c", script], capture_output=True).returncode == 0
