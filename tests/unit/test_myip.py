"""The runner's IP: https only, strict validation of the answer (global unicast IPv4 only), two
independent services that must agree (or one, said in the output), fallbacks and clear errors,
against real https servers on loopback (127.0.0.1 and 127.0.0.2: two hosts, two services)."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from ai_deploy.ci.connect.myip import (
    DEFAULT_MYIP_URLS,
    MYIP_ALLOW_NETWORKS_ENV,
    MYIP_SINGLE_SERVICE_ENV,
    MYIP_URLS_ENV,
    MyIpSettings,
    RunnerIpError,
    find_runner_address,
    myip_urls,
    parse_ipv4_answer,
    runner_ip,
)
from tests.fakes.tls import TestCertificates

pytestmark = pytest.mark.unit

# path -> (status, body, seconds to wait before answering, extra headers)
Routes = dict[str, tuple[int, bytes, float, dict[str, str]]]

# Long enough that no client timeout in these tests can lose the race to the answer; the
# server's teardown releases the wait, so no test ever waits this long.
HANG_S = 60.0
# The timeout for answers that come at once: generous, so a loaded machine never races it.
TIMEOUT_S = 10
RUNNER = "34.64.10.20"  # a global unicast address, as GitHub's runners have


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[Routes] = {}
    hits: ClassVar[list[str]] = []
    release: ClassVar[threading.Event]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        status, body, delay, headers = self.routes.get(self.path, (404, b"not found", 0.0, {}))
        if delay:
            self.release.wait(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting

    def log_message(self, format: str, *args: object) -> None:
        pass


class MyIpServer:
    """A "what is my IP" service on ADDRESS whose answers the test sets per path; https with
    the test CA unless TLS is None."""

    def __init__(self, address: str, tls: TestCertificates | None) -> None:
        self.address = address
        self.routes: Routes = {}
        self.hits: list[str] = []
        self.release = threading.Event()
        handler = type(
            "Handler",
            (_Handler,),
            {"routes": self.routes, "hits": self.hits, "release": self.release},
        )
        self.httpd = ThreadingHTTPServer((address, 0), handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.server_context().wrap_socket(
                self.httpd.socket, server_side=True
            )
            self.scheme = "https"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.address}:{self.httpd.server_address[1]}{path}"

    def answer(
        self,
        path: str,
        body: bytes,
        status: int = 200,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> str:
        self.routes[path] = (status, body, delay, headers or {})
        return self.url(path)

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestCertificates:
    certs = TestCertificates(tmp_path / "tls", ["127.0.0.1", "127.0.0.2"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs.ca_path))
    for name in (MYIP_URLS_ENV, MYIP_SINGLE_SERVICE_ENV, MYIP_ALLOW_NETWORKS_ENV):
        monkeypatch.delenv(name, raising=False)
    return certs


@pytest.fixture
def one(tls: TestCertificates) -> Iterator[MyIpServer]:
    server = MyIpServer("127.0.0.1", tls)
    yield server
    server.stop()


@pytest.fixture
def two(tls: TestCertificates) -> Iterator[MyIpServer]:
    server = MyIpServer("127.0.0.2", tls)
    yield server
    server.stop()


def _closed_port_url(address: str = "127.0.0.1") -> str:
    """An https URL on which nothing listens, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        port = sock.getsockname()[1]
    return f"https://{address}:{port}/ip"


# --- what an answer may be ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (RUNNER, RUNNER),
        ("34.64.10.20\n", RUNNER),
        ("  \t8.8.4.4\r\n", "8.8.4.4"),
        ("20.1.2.3", "20.1.2.3"),
    ],
)
def test_parse_accepts_one_global_ipv4_literal(answer: str, expected: str) -> None:
    assert parse_ipv4_answer(answer) == expected


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("<html><body>34.64.10.20</body></html>", "not a single IPv4"),
        ("34.64.10.20\n34.64.10.21", "not a single IPv4"),
        ("34.64.10.20 34.64.10.21", "not a single IPv4"),
        ("ip=34.64.10.20", "not a single IPv4"),
        ("2001:db8::1", "IPv6"),
        ("::ffff:34.64.10.20", "IPv6"),
        ("34.64.10.256", "not a valid IPv4"),
        ("34.64.10.07", "not a valid IPv4"),
        ("34.64.10", "not a single IPv4"),
        ("34.64.10.20/32", "not a single IPv4"),
        ("\u0663\u0664.64.10.20", "not a single IPv4"),  # Arabic-Indic digits
        ("0.0.0.0", "'this network'"),
        ("10.1.2.3", r"a private address \(10.0.0.0/8\)"),
        ("172.16.5.4", r"a private address \(172.16.0.0/12\)"),
        ("192.168.1.10", r"a private address \(192.168.0.0/16\)"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.7", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.0.8", "IETF protocol assignment"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_parse_rejects_anything_else(answer: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_ipv4_answer(answer)


def test_a_non_global_answer_is_accepted_only_inside_an_allowed_network() -> None:
    allowed = [ipaddress.IPv4Network("10.201.0.0/16")]
    assert parse_ipv4_answer("10.201.3.1", allowed) == "10.201.3.1"
    with pytest.raises(ValueError, match="private address"):
        parse_ipv4_answer("10.202.3.1", allowed)


# --- settings ----------------------------------------------------------------------------------


def test_defaults_are_https_services_on_different_hosts() -> None:
    assert myip_urls({}) == DEFAULT_MYIP_URLS
    assert all(url.startswith("https://") for url in DEFAULT_MYIP_URLS)
    hosts = {url.split("/")[2] for url in DEFAULT_MYIP_URLS}
    assert len(hosts) == len(DEFAULT_MYIP_URLS) >= 2
    assert myip_urls({MYIP_URLS_ENV: "  "}) == DEFAULT_MYIP_URLS
    settings = MyIpSettings.from_env({})
    assert (settings.single_service, settings.allowed_networks) == (False, ())


def test_urls_env_overrides_in_order() -> None:
    env = {MYIP_URLS_ENV: " https://a.example/ip , ,https://b.example/ "}
    assert myip_urls(env) == ("https://a.example/ip", "https://b.example/")


@pytest.mark.parametrize("url", ["http://a.example/ip", "ftp://a.example/", "a.example/ip"])
def test_a_url_that_is_not_https_is_refused_naming_the_variable(url: str) -> None:
    env = {MYIP_URLS_ENV: f"https://b.example/ip,{url}"}
    with pytest.raises(RunnerIpError, match=f"{MYIP_URLS_ENV}: '{url}' is not an https URL"):
        MyIpSettings.from_env(env)


def test_one_service_needs_the_single_service_setting() -> None:
    env = {MYIP_URLS_ENV: "https://a.example/ip,https://A.example/other"}
    with pytest.raises(RunnerIpError, match=f"{MYIP_SINGLE_SERVICE_ENV}=true"):
        MyIpSettings.from_env(env)
    settings = MyIpSettings.from_env({**env, MYIP_SINGLE_SERVICE_ENV: "true"})
    assert settings.single_service


def test_allowed_networks_are_cidrs() -> None:
    settings = MyIpSettings.from_env({MYIP_ALLOW_NETWORKS_ENV: "10.201.0.0/16, 192.168.7.0/24"})
    assert [str(n) for n in settings.allowed_networks] == ["10.201.0.0/16", "192.168.7.0/24"]
    with pytest.raises(RunnerIpError, match=MYIP_ALLOW_NETWORKS_ENV):
        MyIpSettings.from_env({MYIP_ALLOW_NETWORKS_ENV: "10.201.0.1/16"})
    with pytest.raises(RunnerIpError, match=MYIP_ALLOW_NETWORKS_ENV):
        MyIpSettings.from_env({MYIP_ALLOW_NETWORKS_ENV: "everything"})


# --- asking ------------------------------------------------------------------------------------


def test_two_services_that_agree_give_the_address(one: MyIpServer, two: MyIpServer) -> None:
    a = one.answer("/ip", b"34.64.10.20\n")
    b = two.answer("/ip", b"34.64.10.20")
    found = find_runner_address(MyIpSettings((a, b)), TIMEOUT_S)
    assert (found.address, found.sources, found.notes) == (RUNNER, (a, b), ())
    assert runner_ip([a, b], timeout=TIMEOUT_S) == RUNNER


def test_two_services_that_disagree_stop_the_deploy(one: MyIpServer, two: MyIpServer) -> None:
    a = one.answer("/ip", b"34.64.10.20")
    b = two.answer("/ip", b"34.64.99.99")
    third = one.answer("/third", b"34.64.10.20")
    with pytest.raises(RunnerIpError, match="disagree") as caught:
        find_runner_address(MyIpSettings((a, b, third)), TIMEOUT_S)
    assert f"{a} said 34.64.10.20" in str(caught.value)
    assert f"{b} said 34.64.99.99" in str(caught.value)


def test_urls_on_one_host_count_as_one_service(one: MyIpServer, two: MyIpServer) -> None:
    a = one.answer("/a", b"34.64.10.20")
    same_host = one.answer("/b", b"34.64.10.20")
    b = two.answer("/ip", b"34.64.10.20")
    found = find_runner_address(MyIpSettings((a, same_host, b)), TIMEOUT_S)
    assert found.sources == (a, b)
    assert one.hits == ["/a"]
    with pytest.raises(RunnerIpError, match="one service"):
        find_runner_address(MyIpSettings((a, same_host)), TIMEOUT_S)


def test_a_third_service_stands_in_for_one_that_fails(one: MyIpServer, two: MyIpServer) -> None:
    broken = one.answer("/broken", b"oops", status=500)
    b = two.answer("/ip", b"34.64.10.20")
    c = one.answer("/ip", b"34.64.10.20")
    found = find_runner_address(MyIpSettings((broken, b, c)), TIMEOUT_S)
    assert found.sources == (b, c)


def test_a_service_that_hangs_is_given_up_on(
    one: MyIpServer, two: MyIpServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The first service answers only when the test ends, so the others' answers can only
    # come back if the client's timeout ended the first request: no wall-clock bound needed.
    slow = one.answer("/slow", b"34.64.10.20", delay=HANG_S)
    b = two.answer("/ip", b"34.64.10.20")
    c = _closed_port_url()
    d = two.answer("/other", b"34.64.10.20")
    with pytest.raises(RunnerIpError, match=r"only .* said 34\.64\.10\.20"):
        find_runner_address(MyIpSettings((slow, b, c, d)), 0.5)
    assert f"{slow}: no answer within 0.5 s" in caplog.text


def test_one_service_alone_is_accepted_with_the_setting_and_said(one: MyIpServer) -> None:
    a = one.answer("/ip", b"34.64.10.20")
    found = find_runner_address(MyIpSettings((a,), single_service=True), TIMEOUT_S)
    assert found.address == RUNNER
    assert len(found.notes) == 1
    assert MYIP_SINGLE_SERVICE_ENV in found.notes[0] and "not cross-checked" in found.notes[0]


def test_a_private_answer_counts_as_a_failure(one: MyIpServer, two: MyIpServer) -> None:
    a = one.answer("/ip", b"10.0.0.4")
    b = two.answer("/ip", b"34.64.10.20")
    with pytest.raises(RunnerIpError) as caught:
        find_runner_address(MyIpSettings((a, b)), TIMEOUT_S)
    assert "10.0.0.4 is a private address (10.0.0.0/8)" in str(caught.value)


def test_an_allowed_network_is_accepted_and_said(one: MyIpServer) -> None:
    a = one.answer("/ip", b"10.201.3.1")
    settings = MyIpSettings((a,), True, (ipaddress.IPv4Network("10.201.0.0/16"),))
    found = find_runner_address(settings, TIMEOUT_S)
    assert found.address == "10.201.3.1"
    assert any(MYIP_ALLOW_NETWORKS_ENV in note and "10.201.0.0/16" in note for note in found.notes)


def test_a_redirect_is_not_followed(one: MyIpServer, two: MyIpServer) -> None:
    plain = MyIpServer("127.0.0.1", None)
    try:
        target = plain.answer("/ip", b"34.64.10.20")
        a = one.answer("/moved", b"", status=302, headers={"Location": target})
        b = two.answer("/ip", b"34.64.10.20")
        with pytest.raises(RunnerIpError, match="HTTP 302"):
            find_runner_address(MyIpSettings((a, b)), TIMEOUT_S)
        assert plain.hits == []
    finally:
        plain.stop()


def test_an_http_url_in_the_environment_is_never_asked(
    tls: TestCertificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = MyIpServer("127.0.0.1", None)
    try:
        url = plain.answer("/ip", b"34.64.10.20")
        monkeypatch.setenv(MYIP_URLS_ENV, url)
        monkeypatch.setenv(MYIP_SINGLE_SERVICE_ENV, "true")
        with pytest.raises(RunnerIpError, match="not an https URL"):
            runner_ip(timeout=TIMEOUT_S)
        assert plain.hits == []
    finally:
        plain.stop()


def test_an_untrusted_certificate_is_a_failure(
    one: MyIpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    a = one.answer("/ip", b"34.64.10.20")
    with pytest.raises(RunnerIpError, match="request failed"):
        runner_ip([a], timeout=TIMEOUT_S, single_service=True)


def test_every_url_failing_names_each_url_and_answer(one: MyIpServer, two: MyIpServer) -> None:
    html = one.answer("/html", b"<!DOCTYPE html><html><head><title>Blocked</title>" + b"x" * 100)
    ipv6 = two.answer("/v6", b"2001:db8::1\n")
    lines = one.answer("/lines", b"34.64.10.20\n34.64.10.21\n")
    refused = _closed_port_url("127.0.0.2")
    with pytest.raises(RunnerIpError) as caught:
        find_runner_address(MyIpSettings((html, ipv6, lines, refused)), TIMEOUT_S)
    message = str(caught.value)
    for url in (html, ipv6, lines, refused):
        assert url in message
    assert "'<!DOCTYPE html><html><head><title>Blocked</title>xxx" in message
    assert "x" * 20 not in message  # the HTML page is cut short
    assert "IPv6" in message
    assert "'34.64.10.20\\n34.64.10.21' is not a single IPv4 address" in message
    assert "Connection refused" in message
    assert MYIP_URLS_ENV in message and MYIP_SINGLE_SERVICE_ENV in message


def test_oversized_answer_is_rejected(one: MyIpServer) -> None:
    url = one.answer("/big", b"34.64.10.20" + b" " * 1000)
    with pytest.raises(RunnerIpError, match="longer than"):
        runner_ip([url], timeout=TIMEOUT_S, single_service=True)


def test_non_ascii_answer_is_rejected(one: MyIpServer) -> None:
    url = one.answer("/utf8", "34.64.10.20\u00a0".encode())
    with pytest.raises(RunnerIpError, match="not plain ASCII"):
        runner_ip([url], timeout=TIMEOUT_S, single_service=True)


def test_no_urls_at_all_is_an_error() -> None:
    with pytest.raises(RunnerIpError, match=MYIP_URLS_ENV):
        runner_ip([], timeout=1)
