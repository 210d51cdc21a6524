"""The runner's IP: strict validation of the answer, fallback URLs, and clear errors, against a
real HTTP server on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from ai_deploy.ci.myip import (
    DEFAULT_MYIP_URLS,
    MYIP_URLS_ENV,
    RunnerIpError,
    myip_urls,
    parse_ipv4_answer,
    runner_ip,
)

pytestmark = pytest.mark.unit

# path -> (status, body, seconds to wait before answering)
Routes = dict[str, tuple[int, bytes, float]]

# Long enough that no client timeout in these tests can lose the race to the answer; the
# server's teardown releases the wait, so no test ever waits this long.
HANG_S = 60.0
# The timeout for answers that come at once: generous, so a loaded machine never races it.
TIMEOUT_S = 10


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[Routes] = {}
    hits: ClassVar[list[str]] = []
    release: ClassVar[threading.Event]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        status, body, delay = self.routes.get(self.path, (404, b"not found", 0.0))
        if delay:
            self.release.wait(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting

    def log_message(self, format: str, *args: object) -> None:
        pass


class MyIpServer:
    """A loopback "what is my IP" service whose answers the test sets per path."""

    def __init__(self) -> None:
        self.routes: Routes = {}
        self.hits: list[str] = []
        self.release = threading.Event()
        handler = type(
            "Handler",
            (_Handler,),
            {"routes": self.routes, "hits": self.hits, "release": self.release},
        )
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def answer(self, path: str, body: bytes, status: int = 200, delay: float = 0.0) -> str:
        self.routes[path] = (status, body, delay)
        return self.url(path)


@pytest.fixture
def server() -> Iterator[MyIpServer]:
    srv = MyIpServer()
    srv.thread.start()
    yield srv
    srv.release.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _closed_port_url() -> str:
    """A loopback URL on which nothing listens, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/ip"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7\n", "203.0.113.7"),
        ("  \t198.51.100.1\r\n", "198.51.100.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("10.1.2.3", "10.1.2.3"),
    ],
)
def test_parse_accepts_one_ipv4_literal(answer: str, expected: str) -> None:
    assert parse_ipv4_answer(answer) == expected


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("<html><body>203.0.113.7</body></html>", "not a single IPv4"),
        ("203.0.113.7\n203.0.113.8", "not a single IPv4"),
        ("203.0.113.7 203.0.113.8", "not a single IPv4"),
        ("ip=203.0.113.7", "not a single IPv4"),
        ("2001:db8::1", "IPv6"),
        ("::ffff:203.0.113.7", "IPv6"),
        ("203.0.113.256", "not a valid IPv4"),
        ("203.0.113.07", "not a valid IPv4"),
        ("203.0.113", "not a single IPv4"),
        ("203.0.113.7/32", "not a single IPv4"),
        ("\u0662\u0660\u0663.0.113.7", "not a single IPv4"),  # Arabic-Indic digits
        ("0.0.0.0", "not a host address"),
        ("224.0.0.1", "not a host address"),
        ("255.255.255.255", "not a host address"),
    ],
)
def test_parse_rejects_anything_else(answer: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_ipv4_answer(answer)


def test_urls_default_to_a_primary_and_a_fallback() -> None:
    assert myip_urls({}) == DEFAULT_MYIP_URLS
    assert len(DEFAULT_MYIP_URLS) == 2
    assert all(url.startswith("https://") for url in DEFAULT_MYIP_URLS)
    assert myip_urls({MYIP_URLS_ENV: "  "}) == DEFAULT_MYIP_URLS


def test_urls_env_overrides_in_order() -> None:
    env = {MYIP_URLS_ENV: " http://a.example/ip , ,http://b.example/ "}
    assert myip_urls(env) == ("http://a.example/ip", "http://b.example/")


def test_good_answer_is_returned(server: MyIpServer) -> None:
    url = server.answer("/ip", b"203.0.113.7\n")
    assert runner_ip([url], timeout=TIMEOUT_S) == "203.0.113.7"


def test_env_urls_are_used_when_none_given(
    server: MyIpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = server.answer("/first", b"<html>busy</html>")
    second = server.answer("/second", b"198.51.100.9")
    monkeypatch.setenv(MYIP_URLS_ENV, f"{first},{second}")
    assert runner_ip(timeout=TIMEOUT_S) == "198.51.100.9"
    assert server.hits == ["/first", "/second"]


def test_fallback_used_when_first_refuses(server: MyIpServer) -> None:
    fallback = server.answer("/ip", b"198.51.100.1")
    assert runner_ip([_closed_port_url(), fallback], timeout=TIMEOUT_S) == "198.51.100.1"


def test_fallback_used_when_first_answers_500(server: MyIpServer) -> None:
    broken = server.answer("/broken", b"oops", status=500)
    fallback = server.answer("/ip", b"198.51.100.2")
    assert runner_ip([broken, fallback], timeout=TIMEOUT_S) == "198.51.100.2"
    assert server.hits == ["/broken", "/ip"]


def test_fallback_used_when_first_hangs(
    server: MyIpServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The first service answers only when the test ends, so the fallback's answer can only
    # come back if the client's timeout ended the first request: no wall-clock bound needed.
    slow = server.answer("/slow", b"203.0.113.7", delay=HANG_S)
    fallback = server.answer("/ip", b"198.51.100.3")
    assert runner_ip([slow, fallback], timeout=0.5) == "198.51.100.3"
    assert server.hits == ["/slow", "/ip"]
    assert f"{slow}: no answer within 0.5 s" in caplog.text


def test_first_good_answer_wins(server: MyIpServer) -> None:
    first = server.answer("/a", b"203.0.113.1")
    second = server.answer("/b", b"203.0.113.2")
    assert runner_ip([first, second], timeout=TIMEOUT_S) == "203.0.113.1"
    assert server.hits == ["/a"]


def test_every_url_failing_names_each_url_and_answer(server: MyIpServer) -> None:
    html = server.answer("/html", b"<!DOCTYPE html><html><head><title>Blocked</title>" + b"x" * 100)
    ipv6 = server.answer("/v6", b"2001:db8::1\n")
    lines = server.answer("/lines", b"203.0.113.7\n203.0.113.8\n")
    refused = _closed_port_url()
    with pytest.raises(RunnerIpError) as caught:
        runner_ip([html, ipv6, lines, refused], timeout=TIMEOUT_S)
    message = str(caught.value)
    for url in (html, ipv6, lines, refused):
        assert url in message
    assert "'<!DOCTYPE html><html><head><title>Blocked</title>xxx" in message
    assert "x" * 20 not in message  # the HTML page is cut short
    assert "IPv6" in message
    assert "'203.0.113.7\\n203.0.113.8' is not a single IPv4 address" in message
    assert "Connection refused" in message
    assert MYIP_URLS_ENV in message


def test_oversized_answer_is_rejected(server: MyIpServer) -> None:
    url = server.answer("/big", b"203.0.113.7" + b" " * 1000)
    with pytest.raises(RunnerIpError, match="longer than"):
        runner_ip([url], timeout=TIMEOUT_S)


def test_non_ascii_answer_is_rejected(server: MyIpServer) -> None:
    url = server.answer("/utf8", "203.0.113.7\u00a0".encode())
    with pytest.raises(RunnerIpError, match="not plain ASCII"):
        runner_ip([url], timeout=TIMEOUT_S)


def test_no_urls_at_all_is_an_error() -> None:
    with pytest.raises(RunnerIpError, match=MYIP_URLS_ENV):
        runner_ip([], timeout=1)
