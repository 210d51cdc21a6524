"""The fleet benchmark's pure parts: round-robin host choice (and a real load over loopback
addresses), failures per host, the refusing release, the command it runs, the table with its
ratios against the single host, and the acceptance line."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fleet import SCENARIOS, parse_args, refuse_where_flagged
from bench.fleet_cli import deploy_argv
from bench.fleet_load import RoundRobinLoad, failed_by_host, host_for, variant_of
from bench.fleet_report import FleetResult, acceptance, render_table, serves_cell
from bench.metrics import Summary
from testkit.guard import AddressRefused
from testkit.load import OK, REFUSED, RequestRecord
from testkit.variants import EXAMPLE, mark

pytestmark = pytest.mark.unit


def test_requests_go_round_robin_over_the_hosts() -> None:
    assert [host_for(seq, 4) for seq in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert {host_for(seq, 1) for seq in range(5)} == {0}
    with pytest.raises(ValueError, match="no hosts"):
        host_for(0, 0)


def test_failures_are_counted_per_host_from_the_rollouts_start() -> None:
    def rec(seq: int, status: str) -> RequestRecord:
        return RequestRecord(seq, seq * 0.05, seq * 0.05, seq * 0.05 + 0.05, status)

    records = [rec(0, REFUSED), rec(1, OK), rec(2, REFUSED), rec(3, OK), rec(6, REFUSED)]
    # Request 0 was scheduled before the rollout started: not counted.
    assert failed_by_host(records, ["h1", "h2", "h3"], since=0.05) == {"h1": 1, "h2": 0, "h3": 1}


def test_variant_of_reads_the_answer() -> None:
    assert variant_of(b'{"variant": "rel-b", "release": "r1"}') == "rel-b"
    assert variant_of(b'{"release": "r1"}') == "r1"
    assert variant_of(b"not json") is None
    assert variant_of(b"[1, 2]") is None


class _Named(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"variant": self.server.server_address[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def two_loopback_hosts() -> Iterator[int]:
    """Servers on 127.0.0.1 and 127.0.0.2, same port, each answering with its own address."""
    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Named)
    port = first.server_address[1]
    second = http.server.ThreadingHTTPServer(("127.0.0.2", port), _Named)
    servers = [first, second]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield port
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_the_load_alternates_between_hosts_and_sees_one_down(two_loopback_hosts: int) -> None:
    # 127.0.0.3 has nothing listening: every third request is refused, the others answered
    # by the host their turn names.
    addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    gen = RoundRobinLoad(
        addresses, rate=40, timeout=5.0, max_duration=0.3, port=two_loopback_hosts
    ).start()
    assert gen.wait(timeout=30)
    records = gen.stop()
    assert len(records) == 12
    for r in records:
        if host_for(r.seq, 3) == 2:
            assert r.status == REFUSED
        else:
            assert r.ok and r.variant == addresses[host_for(r.seq, 3)]
    assert failed_by_host(records, ["a", "b", "c"], since=0.0) == {"a": 0, "b": 0, "c": 4}


def test_the_load_refuses_addresses_outside_the_sandbox() -> None:
    with pytest.raises(AddressRefused):
        RoundRobinLoad(["127.0.0.1", "192.0.2.1"], rate=1, timeout=1, max_duration=1)
    with pytest.raises(ValueError, match="at least one"):
        RoundRobinLoad([], rate=1, timeout=1, max_duration=1)


def test_the_refusing_release_checks_its_file_at_import() -> None:
    text = refuse_where_flagged(mark((EXAMPLE / "main.py").read_text(), "refuses", 4))
    compile(text, "main.py", "exec")
    check = text.index("if Path('/etc/ai-server-refuses-this-release').exists():")
    assert text.index("from pathlib import Path") < check < text.index("def read_release")
    with pytest.raises(RuntimeError, match="FastAPI import not found"):
        refuse_where_flagged("print('no app')\n")


def test_the_rollout_goes_over_the_inventory_with_the_socket_strategy() -> None:
    argv = deploy_argv(Path("/inv/sandbox.py"), Path("/a.tar.gz"), ("--canary", "1"))
    assert argv[1:6] == ["deploy", "--artifact", "/a.tar.gz", "-i", "/inv/sandbox.py"]
    assert "--host" not in argv and "--no-gcp" in argv
    assert argv[argv.index("--data") + 1] == "deploy_strategy=socket"
    assert argv[-2:] == ["--canary", "1"]


def test_scenarios_and_quick_run() -> None:
    assert [s.key for s in SCENARIOS] == ["a", "b", "c", "d"]
    d = SCENARIOS[3]
    assert (d.expect_rc, d.expect_after, d.refuse_on) == (15, "base", 3)
    assert SCENARIOS[1].rollout == ("--canary", "0", "--batch-size", "100%")
    assert [s.key for s in parse_args(["--quick"]).scenarios] == ["a", "b", "d"]
    full = parse_args([])
    assert (full.steady, full.timeout, len(full.scenarios)) == (5.0, 10.0, 4)


def summary(failed: int = 0, p99: float = 3300.0) -> Summary:
    return Summary(
        requests=200,
        failed=failed,
        failed_pct=failed / 2,
        failures_by_status={"timeout": failed} if failed else {},
        longest_failure_s=0.0,
        longest_failure_ongoing=False,
        steady_requests=100,
        steady_failed=0,
        steady_p50_ms=52.0,
        steady_p99_ms=55.0,
        deploy_requests=150,
        deploy_p50_ms=53.0,
        deploy_p99_ms=p99,
        serves_after="rel",
    )


def result(key: str, wall: float, failed: int = 0, p99: float = 3300.0, rc: int = 0) -> FleetResult:
    hosts = 1 if key == "a" else 4
    r = FleetResult(
        key, f"title {key}", hosts, "--canary 0", 0, "rel", rc, wall, summary(failed, p99)
    )
    r.serves_after = {f"h{i}": "rel" for i in range(hosts)}
    return r


def test_the_table_gives_ratios_against_the_single_host() -> None:
    rows = render_table(
        [result("a", 10.0), result("b", 12.0, p99=1650.0), result("c", 30.0, failed=3, rc=15)]
    ).splitlines()
    assert rows[0].startswith("| Scenario | Hosts |") and len(rows) == 5
    a, b, c = (row.split(" | ") for row in rows[2:])
    assert a[4] == "10.0" and a[7] == "53 / 3300" and a[8] == "rel on 1/1 |"
    assert b[4] == "12.0 (1.20x)" and b[7] == "53 / 1650 (0.50x)"
    assert c[3] == "15 (0) UNEXPECTED" and c[5] == "3 / 200 (timeout 3)"


def test_a_row_not_measured_says_why() -> None:
    missing = FleetResult("c", "t", 4, "--canary 1", 0, "rel", error="not measured: reset failed")
    row = render_table([result("a", 10.0), missing]).splitlines()[-1]
    assert "not measured: reset failed" in row and row.count(" - ") == 5


def test_serves_cell() -> None:
    assert serves_cell({"h1": "base", "h2": "base"}) == "base on 2/2"
    assert serves_cell({"h1": "base", "h2": "down", "h3": "base"}) == "base 2/3, down 1/3"
    assert serves_cell({}) == "-"


def test_acceptance_line() -> None:
    ok = acceptance([result("a", 10.0), result("b", 15.0)])
    assert ok.holds is True and "1.50x" in ok.text and "0 of 200" in ok.text
    slow = acceptance([result("a", 10.0), result("b", 15.1)])
    assert slow.holds is False and "does NOT hold" in slow.text
    lossy = acceptance([result("a", 10.0), result("b", 11.0, failed=1)])
    assert lossy.holds is False and ": 1 of 200" in lossy.text
    failed = acceptance([result("a", 10.0), result("b", 11.0, rc=14)])
    assert failed.holds is False and "(b) exit 14" in failed.text
    assert acceptance([result("a", 10.0)]).holds is None
