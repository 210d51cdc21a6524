"""The sandbox load balancer's config and stats (testkit.lb) and the lbfleet bench's report
(bench.lbfleet_report), as data: no HAProxy, no hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lbfleet_report import LbFleetResult, render_markdown, stream_wait_s
from bench.metrics import Summary
from testkit.lb import Backend, HealthCheck, Sample, fewest_up, parse_stat, render_config

pytestmark = pytest.mark.unit
SOCKET = Path("/tmp/lb/admin.sock")


def config(*backends: Backend, check: HealthCheck | None = None) -> str:
    return render_config(backends, check or HealthCheck(), port=18080, admin_socket=SOCKET)


def test_the_config_checks_like_gcp_and_never_retries() -> None:
    text = config(Backend("h1", "10.201.3.2"), Backend("h2", "10.201.4.2"))
    lines = [line.strip() for line in text.splitlines()]
    assert "bind 127.0.0.1:18080" in lines
    assert "retries 0" in lines and "no option redispatch" in lines
    assert "http-check send meth GET uri /lb-health ver HTTP/1.1 hdr Host sandbox-lb" in lines
    assert "default-server inter 5000 fall 2 rise 2" in lines  # GCP: every 5 s, 2 in a row
    assert "timeout check 5000ms" in lines
    assert "timeout server 600s" in lines and "timeout client 600s" in lines
    assert "server h1 10.201.3.2:8000 check port 8000" in lines
    assert f"stats socket {SOCKET} mode 600 level admin" in lines


def test_the_check_is_scaled_down_as_asked() -> None:
    check = HealthCheck("/ready", 9000, interval_s=0.25, threshold=3, timeout_s=0.2)
    text = config(Backend("a", "127.0.0.11", 8001), check=check)
    assert "default-server inter 250 fall 3 rise 3" in text
    assert "uri /ready " in text and "server a 127.0.0.11:8001 check port 9000" in text
    assert "timeout check 200ms" in text
    assert check.detection_s == 0.75


@pytest.mark.parametrize(
    "kwargs",
    [{"path": "lb-health"}, {"path": "/a b"}, {"interval_s": 0}, {"threshold": 0}],
)
def test_a_bad_check_is_refused_by_name(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="health"):
        HealthCheck(**kwargs)  # type: ignore[arg-type]


def test_no_backend_a_duplicate_name_or_an_outside_address_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one backend"):
        config()
    with pytest.raises(ValueError, match="must differ"):
        config(Backend("h", "10.201.3.2"), Backend("h", "10.201.4.2"))
    for outside in ("10.0.0.5", "example.internal", "10.202.1.2"):
        with pytest.raises(ValueError, match="only sandbox hosts .* not \\['" + outside):
            config(Backend("h", outside))


STAT = """\
# pxname,svname,qcur,qmax,scur,smax,status,type
sandbox_lb,FRONTEND,,,0,0,OPEN,0
hosts,h1,0,0,2,3,UP,2
hosts,h2,0,0,1,1,UP 1/2,2
hosts,h3,0,0,0,0,DOWN 1/2,2
hosts,h4,0,0,0,0,MAINT,2
hosts,BACKEND,0,0,3,4,UP,1
"""


def test_the_stats_say_which_hosts_take_new_requests() -> None:
    states = {s.name: s for s in parse_stat(STAT)}
    assert list(states) == ["h1", "h2", "h3", "h4"]
    assert [n for n, s in states.items() if s.in_service] == ["h1", "h2"]  # "UP 1/2" still is
    assert states["h1"].sessions == 2


def test_fewest_up_reads_only_the_window() -> None:
    samples = [Sample(0.0, ("a", "b", "c")), Sample(1.0, ("a", "c")), Sample(2.0, ("a", "b", "c"))]
    assert fewest_up(samples) == 2
    assert fewest_up(samples, 1.5) == 3
    assert fewest_up(samples, 5.0) == 0


def summary(failed: int, steady_p99: float, deploy_p99: float) -> Summary:
    return Summary(
        requests=400, failed=failed, failed_pct=failed / 4, failures_by_status={"http-503": failed}
        if failed else {}, longest_failure_s=0.0, longest_failure_ongoing=False,
        steady_requests=100, steady_failed=0, steady_p50_ms=5.0, steady_p99_ms=steady_p99,
        deploy_requests=300, deploy_p50_ms=6.0, deploy_p99_ms=deploy_p99, serves_after="r",
    )  # fmt: skip


def result(drain: bool, failed: int = 0, wall: float = 60.0, p99: float = 12.0) -> LbFleetResult:
    r = LbFleetResult(3, drain, "r", rc=0, wall_s=wall, start_s=10.0, floor=1)
    r.drain_wait_s = 3.0 if drain else 0.0
    r.summary, r.streams, r.fewest_up = summary(failed, 10.0, p99), 4, 2
    r.serves_after = {"h1": "r", "h2": "r", "h3": "r"}
    return r


def test_wall_time_is_held_against_start_plus_two_waits_per_host_over_the_floor() -> None:
    r = result(True, wall=60.0)
    assert r.expected_wall_s == (10.0 + 2 * 3.0) * 3  # 48 s
    assert r.wall_x == 60.0 / 48.0
    assert r.goals() == ["wall less stream waits 1.25x > 1.2x"]
    assert result(True, wall=57.0).goals() == []
    r.floor = 3
    assert r.expected_wall_s == 16.0


def test_drain_rows_are_held_to_every_goal_and_the_baseline_to_none() -> None:
    bad = result(True, failed=3, p99=20.0)
    bad.streams_cut, bad.serves_after = 1, {"h1": "r", "h2": "old", "h3": "r"}
    assert bad.goals() == [
        "3 failed", "1 streams cut", "p99 2.00x > 1.5x", "wall less stream waits 1.25x > 1.2x",
        "not every host on the release",
    ]  # fmt: skip
    assert result(False, failed=17, p99=50.0).goals() == []
    text = render_markdown([("Command", "`x`")], [result(True, wall=50.0), result(False, 17)])
    assert "| 3 hosts, lb_drain=true | 0 | 0 / 400 | 0 / 4 | 2 of 3 |" in text
    assert "| met |" in text and "17 / 400 (http-503 17)" in text and "| baseline |" in text
    assert result(True).as_dict()["missed_goals"] == ["wall less stream waits 1.25x > 1.2x"]


def test_the_waits_for_open_streams_are_read_from_the_deploys_output_and_taken_out() -> None:
    output = "\n".join([
        "[h1] drained from the load balancer; waiting 12 s",
        "[h1] 2 request(s) in flight, finished in 18.5 s",
        "[h2] no request in flight",
        "[h3] 1 request(s) in flight, 1 still open after drain_timeout_s (90.0 s): the stop "
        "cuts them",
        "[h4] ai-server.service: 1 connection(s) open at the stop, all finished, stopped in 4.5 s",
        "[h5] ai-server.service: no connection open at the stop",
    ])  # fmt: skip
    assert stream_wait_s(output) == 23.0  # a wait that ended in a cut is not a stream's end
    r = result(True, wall=71.0)
    r.stream_wait_s = 23.0
    assert r.wall_x is not None and r.wall_x > 1.2  # 71 / 48: raw
    assert r.rollout_wall_x == 48.0 / 48.0 and r.goals() == []
    text = render_markdown([("Command", "`x`")], [r])
    assert "| 71.0 (23.0) |" in text and "| 1.48x | 1.00x | met |" in text
