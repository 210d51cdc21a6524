"""The engine benchmark's pure parts and its clients over loopback: the outage the clients saw,
the engine's start-up line, the deploy's drain lines, a stream that is cut (closed early, out of
order, stalled) never counted intact, POST /v1/completions at a steady rate, the verdicts on the
120-second stream and on the outage with and without preparation, and the engine's phases."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.engine import parse_args, plan
from bench.engine_host import engine_env
from bench.engine_load import COMPLETION, CompletionsLoad, StreamResult, TokenStream
from bench.engine_report import (
    PREP_WORDS,
    Round,
    StartFigures,
    no_answer_s,
    outage_verdict,
    parse_start,
    said_lines,
    stream_verdict,
)
from testkit.load import OK, REFUSED, RequestRecord

pytestmark = pytest.mark.unit


def rec(seq: int, start: float, end: float, status: str = OK) -> RequestRecord:
    return RequestRecord(seq, start, start, end, status)


def test_no_answer_is_the_longest_time_without_a_successful_answer() -> None:
    records = [
        rec(0, 0.0, 0.1),
        rec(1, 1.0, 1.1),
        rec(2, 1.5, 1.6, REFUSED),  # a failure answers nothing
        rec(3, 2.0, 9.0),  # queued in the backlog, answered once the new process is up
        rec(4, 9.5, 9.6),
    ]
    assert no_answer_s(records, 1.0, 10.0) == pytest.approx(7.9)
    # Down at the end: the gap runs to the end of the window.
    assert no_answer_s(records[:2], 1.0, 10.0) == pytest.approx(8.9)
    assert no_answer_s([], 2.0, 5.0) == pytest.approx(3.0)


def test_the_engines_last_start_line_is_read() -> None:
    log = (
        "INFO: ai-server start-up phases {'weights': 9.0, 'load': 1.0, 'compile': 15.0, "
        "'warmup': 5.0}, compile cache hit: False, 100 bytes of weights read\n"
        "INFO: Shutting down\n"
        "INFO: ai-server start-up phases {'weights': 0.25, 'load': 5.0, 'compile': 1.0, "
        "'warmup': 5.0}, compile cache hit: True, 2147483648 bytes of weights read\n"
    )
    start = parse_start(log)
    assert start == StartFigures(
        {"weights": 0.25, "load": 5.0, "compile": 1.0, "warmup": 5.0}, True, 2147483648
    )
    assert start.total_s == pytest.approx(11.25)
    assert parse_start("INFO: Started server process\n") is None


def test_only_the_deploys_lines_on_open_connections_are_kept() -> None:
    out = (
        "[h] Success\n"
        "    [h] 1 connection(s) open at the switch, drained in 118.2 s\n"
        "[h] No changes\n"
        "[h] drain_mode=cut: cutting 1 connection(s) open on port 8000\n"
    )
    assert said_lines(out) == [
        "[h] 1 connection(s) open at the switch, drained in 118.2 s",
        "[h] drain_mode=cut: cutting 1 connection(s) open on port 8000",
    ]
    prep = "[h] page cache: read 2147.5 MB of release r's model files\n[h] outage 12.3 s: from"
    assert said_lines(out + prep, PREP_WORDS) == prep.splitlines()


class _Streams(http.server.BaseHTTPRequestHandler):
    """/stream?tokens=N as the engine sends it; how it misbehaves is set per test."""

    mode = "whole"

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        tokens = int(self.path.split("tokens=")[1].split("&")[0])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        order = list(range(tokens))
        if self.mode == "swapped":
            order[1], order[2] = order[2], order[1]
        for index in order:
            if self.mode == "closed" and index == tokens // 2:
                return  # the server went away mid-stream
            if self.mode == "stalled" and index == tokens // 2:
                time.sleep(2)  # longer than the client's timeout
            token = {"index": index, "token": f"tok{index}", "release": "r1"}
            self.wfile.write(f"data: {json.dumps(token)}\n\n".encode())
            self.wfile.flush()
        if self.mode != "no-done":
            self.wfile.write(b"data: [DONE]\n\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = json.loads(body) == json.loads(COMPLETION)
        self.send_response(200 if ok else 422)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def server() -> Iterator[tuple[int, type[_Streams]]]:
    handler = type("Handler", (_Streams,), {})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    srv.handle_error = lambda *_: None  # type: ignore[method-assign]  # clients that leave early
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1], handler
    srv.shutdown()
    srv.server_close()


def read_stream(port: int, timeout: float = 5.0) -> StreamResult:
    stream = TokenStream("127.0.0.1", seconds=2.0, timeout=timeout, port=port).start()
    return stream.join(30)


def test_a_whole_stream_is_intact(server: tuple[int, type[_Streams]]) -> None:
    result = read_stream(server[0])
    assert result.intact and result.tokens == result.asked == 10
    assert result.releases == {"r1"} and result.error == ""


@pytest.mark.parametrize("mode", ["closed", "swapped", "no-done", "stalled"])
def test_a_broken_stream_is_never_intact(server: tuple[int, type[_Streams]], mode: str) -> None:
    port, handler = server
    handler.mode = mode
    result = read_stream(port, timeout=0.5)
    assert not result.intact, result
    if mode in ("closed", "stalled", "no-done"):
        assert result.error and not result.done


def test_completions_are_posted_at_the_rate(server: tuple[int, type[_Streams]]) -> None:
    load = CompletionsLoad("127.0.0.1", rate=20, timeout=2, max_duration=0.5)
    load.port = server[0]
    load.start().wait(5)
    records = load.stop()
    assert len(records) == 10
    assert all(r.status == OK and r.code == 200 for r in records), records


def stream_round(key: str, strategy: str, data: tuple[str, ...], intact: bool, said: str) -> Round:
    stream = StreamResult(asked=600, tokens=600 if intact else 120, done=intact)
    return Round(key, "stream", strategy, data, rc=0, streams=[stream], drained=[said])


def test_the_long_stream_verdicts() -> None:
    bg = "[h] 1 connection(s) open at the switch, drained in 101.3 s"
    assert stream_verdict(stream_round("bg", "bluegreen", (), True, bg)).ok
    # Another count than one (none seen, or the stream among others) is not this case.
    for other in ("0", "11"):
        said = bg.replace(" 1 ", f" {other} ")
        assert not stream_verdict(stream_round("bg", "bluegreen", (), True, said)).ok, said
    # Intact but nothing said: not enough.
    assert not stream_verdict(stream_round("bg", "bluegreen", (), True, "[h] Success")).ok
    wait = "[h] ai-server.service: 1 connection(s) open at the stop, all finished, stopped in 2 s"
    assert stream_verdict(stream_round("w", "socket", ("drain_mode=wait",), True, wait)).ok
    assert not stream_verdict(stream_round("w", "socket", ("drain_mode=wait",), False, wait)).ok
    cut = "[h] drain_mode=cut: cutting 1 connection(s) open on port 8000"
    assert stream_verdict(stream_round("c", "socket", ("drain_mode=cut",), False, cut)).ok
    # A silent cut fails, and so does a stream "cut" that in fact finished.
    assert not stream_verdict(stream_round("c", "socket", ("drain_mode=cut",), False, "")).ok
    assert not stream_verdict(stream_round("c", "socket", ("drain_mode=cut",), True, cut)).ok
    assert stream_verdict(Round("x", "stream", "socket", ())).ok is False  # not measured


def test_the_outage_verdict_against_the_goal() -> None:
    def r(kind: str, outage: float) -> Round:
        return Round(kind, kind, "socket", (), outage_s=outage)

    rounds = [r("without", 32.0), r("with", 12.0), r("without", 30.0), r("with", 14.0)]
    verdict = outage_verdict(rounds, preparation_built=True)
    assert verdict.ok is True and "0.42x" in verdict.text
    assert outage_verdict([r("without", 20.0), r("with", 11.0)], True).ok is False
    assert outage_verdict(rounds, preparation_built=False).ok is None
    assert outage_verdict([r("with", 12.0)], True).ok is None


def test_the_engines_start_is_two_thirds_weights_and_compile() -> None:
    env = engine_env(30)
    assert env["ENGINE_COMPILE_SECONDS"] == "15" and env["MODEL_LOAD_SECONDS"] == "5"
    assert env["ENGINE_WARMUP_SECONDS"] == "5" and env["ENGINE_COMPILE_WARM_SECONDS"] == "1"
    assert env["ENGINE_MODEL_DIR"] == "models/bench-model"


def test_the_run_scales_down_and_measures_every_case() -> None:
    args = parse_args(["--start-s", "6", "--rounds", "1", "--stream-s", "20"])
    assert args.model_mib == 410 and args.steady == 5.0
    assert parse_args([]).model_mib == 2048 and parse_args([]).stream_s == 120
    keys = [key for key, *_ in plan(2)]
    assert keys[:6] == ["restart", "socket", "bluegreen", "stream-bluegreen",
                        "stream-socket-wait", "stream-socket-cut"]  # fmt: skip
    assert keys[6:] == ["without-1", "with-1", "without-2", "with-2"]
    with pytest.raises(SystemExit):
        parse_args(["--start-s", "0"])


def test_the_report_has_every_table_whole() -> None:
    from bench.engine_report import render_markdown

    stream = stream_round("stream-bluegreen", "bluegreen", (), True, "[h] 1 connection(s) x")
    unmeasured = Round("socket", "strategy", "socket", (), error="not measured: put failed")
    outage = Round("without-1", "without", "socket", (), rc=0, outage_s=31.0, start=StartFigures(
        {"weights": 5.0, "compile": 15.0}, False, 2_000_000_000))  # fmt: skip
    text = render_markdown([("Command", "`x`")], [unmeasured, stream, outage], False, ["n"])
    tables = [line for line in text.splitlines() if line.startswith("|")]
    assert len(tables) == 3 * 2 + 3  # each header and its rule line, one row per round
    for block in text.split("\n\n"):
        widths = {line.count("|") for line in block.splitlines() if line.startswith("|")}
        assert len(widths) <= 1, block  # every row as wide as its header
    assert "not measured: put failed" in text and "| 2000 |" in text
    assert "outage: not measured (with - s, without 31.0 s" in text


def test_the_host_scripts_drop_pages_and_time_the_reads(tmp_path: Path) -> None:
    """The scripts the bench runs inside the host, run here: every file under a tree (links
    and nested folders) and a single file accepted; the read prints two timings."""
    from bench.engine_host import _EVICT, _READ

    (tmp_path / "store" / "a" / "b").mkdir(parents=True)
    blob = tmp_path / "store" / "a" / "b" / "blob"
    blob.write_bytes(b"x" * 3_000_000)
    (tmp_path / "store" / "link").symlink_to(blob)
    for script, target in ((_EVICT, tmp_path / "store"), (_EVICT, blob), (_READ, blob)):
        done = subprocess.run(
            [sys.executable, "-c", script, str(target)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    cold, warm = (float(v) for v in done.stdout.split())
    assert cold >= 0 and warm >= 0
