"""The benchmark's pure parts: percentiles, failure windows, summaries and ratios, the address
guard, the seed's script and unit, the release variants, and the table rendering."""

from __future__ import annotations

import http.server
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import ours, seed
from bench.metrics import (
    failure_windows,
    format_ratio,
    longest_window,
    percentile,
    ratio,
    serving_at_end,
    summarize,
)
from bench.report import RunInfo, render_markdown, render_table
from bench.scenarios import Measurement, Outcome
from testkit.guard import AddressRefused, address_allowed, check_address
from testkit.load import OK, REFUSED, LoadGenerator, RequestRecord, http_get
from testkit.variants import EXAMPLE, add_dependency, crash_at_import, health_500, mark

pytestmark = pytest.mark.unit

INTERVAL = 0.05


def rec(seq: int, ok: bool = True, latency: float = 0.05, variant: str = "base") -> RequestRecord:
    """Request SEQ of a 20/s schedule."""
    at = seq * INTERVAL
    return RequestRecord(
        seq,
        at,
        at,
        at + latency,
        OK if ok else REFUSED,
        200 if ok else 0,
        variant if ok else None,
    )


# --- percentiles ------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 99) == pytest.approx(4.96)
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)


def test_percentile_of_nothing_and_of_one_value() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# --- failure windows --------------------------------------------------------------------------


def test_failure_windows_end_at_the_next_success() -> None:
    oks = [True, True, False, False, False, True, False, True]
    windows = failure_windows([rec(i, ok) for i, ok in enumerate(oks)], INTERVAL)
    assert [(w.count, w.ongoing) for w in windows] == [(3, False), (1, False)]
    assert windows[0].start == pytest.approx(2 * INTERVAL)
    assert windows[0].duration == pytest.approx(3 * INTERVAL)
    assert windows[1].duration == pytest.approx(INTERVAL)
    longest = longest_window(windows)
    assert longest is windows[0]


def test_failure_window_still_open_at_the_end_is_ongoing() -> None:
    records = [rec(0), rec(1, False), rec(2, False)]
    (window,) = failure_windows(list(reversed(records)), INTERVAL)  # order does not matter
    assert window.ongoing and window.count == 2
    assert window.duration == pytest.approx(2 * INTERVAL)


def test_no_failures_no_windows() -> None:
    assert failure_windows([rec(i) for i in range(10)], INTERVAL) == []
    assert longest_window([]) is None


# --- summaries --------------------------------------------------------------------------------


def test_summary_separates_steady_state_deploy_and_tail() -> None:
    # 0-2 s steady (40 requests, 50 ms), deploy 2-4 s: 20 refused then 20 slow, tail 4-5 s.
    records = [rec(i, latency=0.05) for i in range(40)]
    records += [rec(i, ok=False) for i in range(40, 60)]
    records += [rec(i, latency=0.5, variant="code") for i in range(60, 100)]
    s = summarize(records, steady=(0.0, 1.99), deploy=(2.0, 4.0), end=5.0, interval=INTERVAL)
    assert s.steady_requests == 40 and s.steady_failed == 0
    assert s.requests == 60  # 2.0 s .. 4.95 s
    assert s.failed == 20 and s.failed_pct == pytest.approx(100 * 20 / 60)
    assert s.failures_by_status == {REFUSED: 20}
    assert s.longest_failure_s == pytest.approx(1.0)
    assert not s.longest_failure_ongoing
    assert s.steady_p50_ms == pytest.approx(50) and s.steady_p99_ms == pytest.approx(50)
    assert s.deploy_p99_ms == pytest.approx(500)
    assert s.serves_after == "code"


def test_serving_at_end_reports_down_when_the_last_second_failed() -> None:
    records = [rec(i) for i in range(20)] + [rec(i, ok=False) for i in range(20, 60)]
    assert serving_at_end(records, end=3.0) == "down"
    assert serving_at_end(records, end=1.0) == "base"


# --- ratios -----------------------------------------------------------------------------------


def test_ratio_of_ours_to_the_seed() -> None:
    assert ratio(3.0, 6.0) == pytest.approx(0.5)
    assert ratio(0, 68) == 0.0
    assert ratio(0, 0) is None
    assert ratio(5, 0) == math.inf
    assert ratio(None, 3.0) is None and ratio(3.0, None) is None


def test_ratio_formatting() -> None:
    assert format_ratio(0.5) == "0.50x"
    assert format_ratio(None) == "-"
    assert format_ratio(math.inf) == "∞"


# --- the address guard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.3.2.1", "::1", "10.201.1.2", "10.201.250.2", "10.201.17.2"]
)
def test_loopback_and_sandbox_guests_are_allowed(address: str) -> None:
    assert address_allowed(address)
    assert check_address(address) == address


@pytest.mark.parametrize(
    "address",
    [
        "10.201.1.1",  # the host side of a sandbox link
        "10.201.0.2",
        "10.201.251.2",
        "10.201.1.3",
        "10.0.0.2",
        "192.168.1.2",
        "8.8.8.8",
        "localhost",
        "example.com",
        "10.201.1.2:8000",
        "",
    ],
)
def test_everything_else_is_refused(address: str) -> None:
    assert not address_allowed(address)
    with pytest.raises(AddressRefused):
        check_address(address)


def test_load_and_requests_refuse_other_addresses_before_any_traffic() -> None:
    with pytest.raises(AddressRefused):
        LoadGenerator("8.8.8.8")
    with pytest.raises(AddressRefused):
        http_get("10.0.0.1", 8000, "/health", 1.0)
    with pytest.raises(AddressRefused):
        seed.health_poll("1.1.1.1", attempts=1, interval_s=0)


# --- the load generator on loopback -----------------------------------------------------------


# Longer than any client timeout here can race: the server's teardown releases the wait.
HANG_S = 60.0


class _Slow(http.server.BaseHTTPRequestHandler):
    delay = 0.0
    release: threading.Event

    def do_GET(self) -> None:
        self.release.wait(self.delay)
        body = json.dumps({"variant": "loopback"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # a burst of connects is queued, not dropped and retried


@pytest.fixture
def loopback_server() -> Iterator[tuple[int, type[_Slow]]]:
    release = threading.Event()
    handler = type("Handler", (_Slow,), {"delay": 0.3, "release": release})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_slow_answers_do_not_delay_the_schedule(loopback_server: tuple[int, type[_Slow]]) -> None:
    # 300 ms answers on a 25 ms schedule. Sent one after another, request 19 would start
    # about 5 s late and no two would overlap; scheduled apart, about 12 are in flight at once.
    port, _ = loopback_server
    gen = LoadGenerator("127.0.0.1", port=port, rate=40, timeout=10.0, max_duration=0.5).start()
    assert gen.wait(timeout=30)  # the generator stops scheduling by itself after 0.5 s
    records = gen.stop()
    assert len(records) == 20
    assert all(r.ok and r.variant == "loopback" for r in records)
    assert all(r.latency >= 0.29 for r in records)
    in_flight = max(sum(1 for r in records if r.start <= s.start < r.end) for s in records)
    assert in_flight >= 5
    assert max(r.start - r.scheduled for r in records) < 1.5  # generous: a loaded machine lags


def test_client_timeout_and_refused_connections(loopback_server: tuple[int, type[_Slow]]) -> None:
    port, handler = loopback_server
    handler.delay = HANG_S  # no answer until the test ends: only the client's timeout ends it
    assert http_get("127.0.0.1", port, "/", 0.1).status == "timeout"
    handler.delay = 0.0  # answers at once; the generous timeouts only keep load from racing
    probe = http_get("127.0.0.1", port, "/", 10.0)
    assert probe.status == OK and probe.code == 200
    free = _free_port()
    assert http_get("127.0.0.1", free, "/", 10.0).status == REFUSED


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the seed's procedure ---------------------------------------------------------------------


def test_seed_script_keeps_the_seeds_steps_in_order() -> None:
    script = seed.DEPLOY_SCRIPT
    steps = [
        "set -e",
        "if ! command -v uv &> /dev/null; then",
        'export PATH="$HOME/.local/bin:$PATH"',
        "sudo systemctl stop ai-server || true",
        "sudo mkdir -p /app/ai-server",
        "sudo tar -xzf /tmp/ai-server-deploy.tar.gz -C /app/ai-server",
        "sudo chown -R $(whoami):$(whoami) /app/ai-server",
        'NEW_HASH=$(md5sum uv.lock | cut -d" " -f1)',
        'if [ "$NEW_HASH" != "$OLD_HASH" ] || [ ! -d ".venv" ]; then',
        "rm -rf .venv",
        "$HOME/.local/bin/uv sync --frozen",
        'echo "$NEW_HASH" > .venv/.uv_lock_hash',
        "sudo systemctl start ai-server",
        "rm -f /tmp/ai-server-deploy.tar.gz",
    ]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "curl" not in script.replace("the curl installer", "")


def test_seed_unit_is_the_guides() -> None:
    unit = seed.UNIT
    for line in (
        "User=ubuntu",
        "Group=ubuntu",
        "WorkingDirectory=/app/ai-server",
        "ExecStart=/app/ai-server/.venv/bin/uvicorn main:app --host 0.0.0.0 --port 8000",
        "Restart=on-failure",
        "RestartSec=5",
        "EnvironmentFile=/app/ai-server/.env",
        "StandardOutput=append:/var/log/dojangkok/ai-server.log",
        "StandardError=append:/var/log/dojangkok/ai-server-error.log",
        "WantedBy=multi-user.target",
    ):
        assert f"\n{line}\n" in unit


def test_seed_health_poll_defaults_are_the_seeds() -> None:
    assert (seed.HEALTH_ATTEMPTS, seed.HEALTH_INTERVAL_S) == (12, 5.0)


# --- variants ---------------------------------------------------------------------------------


def test_variants_are_valid_python_with_distinct_sizes() -> None:
    text = (EXAMPLE / "main.py").read_text()
    made = {
        "base": mark(text, "base", 0),
        "code": mark(text, "code", 1),
        "lock": mark(text, "lock", 9),
        "crash": crash_at_import(mark(text, "crash", 2)),
        "health500": health_500(mark(text, "health500", 3)),
    }
    for label, source in made.items():
        compile(source, f"{label}/main.py", "exec")
        assert f"BENCH_VARIANT = {label!r}" in source
        assert '"variant": BENCH_VARIANT' in source
    assert len({len(s) for s in made.values()}) == len(made)
    assert (
        made["crash"]
        .rstrip()
        .endswith('raise RuntimeError("bench: this release crashes at import")')
    )
    assert "status_code=500" in made["health500"]


def test_add_dependency_puts_it_first_in_the_list() -> None:
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert '    "six",\n    "fastapi",' in add_dependency(pyproject, "six")


# --- strategies -------------------------------------------------------------------------------


def test_a_strategy_the_checkout_lacks_is_reported(tmp_path: Path) -> None:
    without = tmp_path / "without.py"
    without.write_text('app_name = "ai-server"\nuv_version = "0.13.9"\n')
    with_it = tmp_path / "with.py"
    with_it.write_text('deploy_strategy = "socket"\n')
    assert ours.group_data_value("deploy_strategy", without) is None
    assert ours.group_data_value("uv_version", without) == "0.13.9"
    assert ours.group_data_value("deploy_strategy", with_it) == "socket"
    assert ours.unavailable_reason("restart") is None
    assert "unknown strategy" in (ours.unavailable_reason("canary") or "")


def test_pyinfra_lines_shown_while_running() -> None:
    assert ours.interesting("    [h] current -> releases/abc; restarting ai-server.service")
    assert not ours.interesting("    [h] No changes")
    assert not ours.interesting("[h] Success")
    assert ours.interesting("--> pyinfra error: No hosts remaining!")


# --- the table --------------------------------------------------------------------------------


def _measurement(target: str, failed: int, wall: float, ok: bool = True) -> Measurement:
    records = [rec(i) for i in range(40)]
    records += [rec(i, ok=False) for i in range(40, 40 + failed)]
    records += [rec(i, variant="code") for i in range(40 + failed, 140)]
    summary = summarize(records, steady=(0, 1.99), deploy=(2.0, 6.0), end=7.0, interval=INTERVAL)
    outcome = Outcome(ok, "green" if target == "seed" else "ok", 100.0, 100.0 + wall, "")
    return Measurement("code", target, 3.0, 2.0, outcome, summary, records, 0.0, 2.0, 6.0, 7.0)


def test_table_shows_ratios_against_the_seed_of_the_same_scenario() -> None:
    rows = [
        _measurement("restart", failed=34, wall=3.0),
        _measurement("seed", failed=68, wall=6.0),
        Measurement("code", "socket", 3.0, 10.0, error="not measured: not built yet"),
    ]
    table = render_table(rows, {"code": "New code, same uv.lock"})
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Scenario | Target | Deploy result | Wall s (xseed)")
    assert len(lines) == 5
    seed_row, ours_row, socket_row = lines[2:]
    assert seed_row.startswith("| New code, same uv.lock | seed script | green | 6.0 |")
    assert "68 / 100 (68.0%) refused 68 |" in seed_row
    assert "x)" not in seed_row.split("|")[4]
    assert "| ours: restart | ok | 3.0 (0.50x) |" in ours_row
    assert "34 / 100 (34.0%) refused 34 (0.50x)" in ours_row
    assert "1.70 (0.50x)" in ours_row
    assert ours_row.rstrip(" |").endswith("code")
    assert "| ours: socket | not measured: not built yet | - |" in socket_row
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_markdown_has_the_header_and_a_table_per_model_load() -> None:
    info = RunInfo(
        command=".venv/bin/python -m bench.run --quick",
        date="2026-01-01 00:00 UTC",
        machine="2 CPUs",
        hosts="sandbox",
        load="20 requests/s",
        timeouts="2 s",
        windows="3 s",
        seed_health="12 x 5 s",
        notes=("a note",),
    )
    text = render_markdown(info, {3.0: [_measurement("seed", 68, 6.0)], 30.0: []})
    assert "`.venv/bin/python -m bench.run --quick`" in text
    assert "## MODEL_LOAD_SECONDS=3\n" in text and "## MODEL_LOAD_SECONDS=30\n" in text
    assert "- a note" in text


def test_a_host_removed_from_outside_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from bench import scenarios

    mine = SimpleNamespace(name="bench1-1-seed", address="10.201.4.2", running=True)
    monkeypatch.setattr(scenarios.hosts, "list_hosts", lambda: [mine])
    scenarios.check_host("bench1-1-seed", "10.201.4.2")
    with pytest.raises(scenarios.HostGone):
        scenarios.check_host("bench1-1-seed", "10.201.5.2")  # the name now has another address
    monkeypatch.setattr(scenarios.hosts, "list_hosts", lambda: [])
    with pytest.raises(scenarios.HostGone):
        scenarios.check_host("bench1-1-seed", "10.201.4.2")
