"""The sandbox's load balancer (testkit.lb), HAProxy for real, in front of small HTTP servers on
loopback addresses (127.0.0.11, .12, .13: one per "host", the same ports on each, as sandbox
hosts have): it starts, balances round-robin, takes a host out when its health check fails and
puts it back, never retries a failed request on another host, lets an open stream finish on a
host it took out, and leaves no process, config or socket behind, a failing block included."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testkit.lb import Backend, HealthCheck, LoadBalancer, UpSampler, free_port, haproxy
from testkit.lbtraffic import LbTraffic

pytestmark = pytest.mark.e2e
CHECK = HealthCheck(interval_s=0.2, threshold=2)
ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


@dataclass
class FakeHost:
    """A host's service (SERVICE_PORT: who answered, a slow stream) and its health answer on
    HEALTH_PORT (200 or 503, set by the test)."""

    name: str
    address: str
    service_port: int
    health_port: int
    health: int = 200
    cut_streams_after: int = 0  # tokens a stream gets before its connection closes (0: all)
    hits: list[str] = field(default_factory=list)
    servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def start(self) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                return

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.server.server_address[1] == host.health_port:
                    self._answer(host.health, b"health")
                    return
                host.hits.append(self.path)
                if self.path.startswith("/stream"):
                    self.send_response(200)
                    self.end_headers()  # no length: the stream ends when the server closes
                    for i in range(10):
                        event = {"index": i, "release": host.name}
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                        if i + 1 == host.cut_streams_after:
                            self.close_connection = True
                            return
                        time.sleep(0.2)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.close_connection = True
                    return
                self._answer(200, host.name.encode())

            do_POST = do_GET

        for port in dict.fromkeys((self.service_port, self.health_port)):
            server = ThreadingHTTPServer((self.address, port), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)

    def stop_service(self) -> None:
        """The service's port closed (connections refused), its health still answered."""
        server = self.servers.pop(0)
        server.shutdown()
        server.server_close()

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.servers.clear()


@pytest.fixture
def hosts() -> Iterator[list[FakeHost]]:
    service, health = free_port(), free_port()
    fakes = [FakeHost(f"h{i}", a, service, health) for i, a in enumerate(ADDRESSES, 1)]
    for fake in fakes:
        fake.start()
    yield fakes
    for fake in fakes:
        fake.stop()


def backends(fakes: list[FakeHost]) -> list[Backend]:
    return [Backend(f.name, f.address, f.service_port) for f in fakes]


def check_for(fakes: list[FakeHost]) -> HealthCheck:
    return HealthCheck(
        path="/lb-health", port=fakes[0].health_port, interval_s=CHECK.interval_s, threshold=2
    )


def get(lb: LoadBalancer, path: str = "/", method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection(lb.address, lb.port, timeout=10)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def test_it_balances_over_every_host_in_turn(hosts: list[FakeHost]) -> None:
    with haproxy(backends(hosts), check_for(hosts)) as lb:
        lb.wait_for([h.name for h in hosts], timeout=10)
        answers = [get(lb) for _ in range(6)]
    assert sorted(answers) == sorted([(200, h.name) for h in hosts] * 2), answers


def test_a_failing_check_takes_a_host_out_and_a_passing_one_puts_it_back(
    hosts: list[FakeHost],
) -> None:
    with haproxy(backends(hosts), check_for(hosts)) as lb, UpSampler(lb, every_s=0.05) as up:
        lb.wait_for(["h1", "h2", "h3"], timeout=10)
        hosts[1].health = 503
        lb.wait_for(["h1", "h3"], timeout=10)
        assert lb.states()["h2"].status == "DOWN"
        answers = {get(lb)[1] for _ in range(6)}
        assert answers == {"h1", "h3"}  # no new request reaches the host taken out
        hosts[1].health = 200
        lb.wait_for(["h1", "h2", "h3"], timeout=10)
    assert up.fewest_up() == 2
    assert max(len(s.up) for s in up.samples) == 3


def test_a_failed_request_is_not_retried_on_another_host(hosts: list[FakeHost]) -> None:
    """h2 refuses connections but still passes its check, so HAProxy keeps sending it its turn:
    those requests fail (503) rather than being replayed on h1 or h3."""
    with haproxy(backends(hosts), check_for(hosts)) as lb:
        lb.wait_for(["h1", "h2", "h3"], timeout=10)
        hosts[1].stop_service()
        answers = [get(lb, "/v1/completions", "POST") for _ in range(9)]
    codes = sorted(code for code, _ in answers)
    assert codes == [200] * 6 + [503] * 3, answers
    assert len(hosts[0].hits) + len(hosts[2].hits) == 6


def test_a_stream_open_on_a_host_taken_out_finishes(hosts: list[FakeHost]) -> None:
    with haproxy(backends(hosts[:1]), check_for(hosts)) as lb:
        lb.wait_for(["h1"], timeout=10)
        conn = http.client.HTTPConnection(lb.address, lb.port, timeout=10)
        conn.request("GET", "/stream")
        reply = conn.getresponse()
        first = reply.readline()
        hosts[0].health = 503
        lb.wait_for([], timeout=10)
        rest = reply.read().decode()
        conn.close()
    assert first.startswith(b"data: {")
    assert rest.endswith("data: [DONE]\n\n"), rest


def test_traffic_counts_what_failed_and_what_was_cut_and_who_was_up(
    hosts: list[FakeHost],
) -> None:
    """Through the load balancer: a host taken out by its check costs no request; a host that
    refuses connections before its check fails costs some; a stream cut on a host counts."""
    with haproxy(backends(hosts), check_for(hosts)) as lb:
        lb.wait_for(["h1", "h2", "h3"], timeout=10)
        traffic = LbTraffic(lb, rate=30, timeout=5, max_duration=60, sample_every_s=0.05).start()
        drained = traffic.open_streams(3, tokens=10, interval=0.2)
        hosts[0].health = 503
        lb.wait_for(["h2", "h3"], timeout=10)
        time.sleep(0.5)
        taken_out = traffic.now()
        hosts[0].health = 200
        lb.wait_for(["h1", "h2", "h3"], timeout=10)
        clean = traffic.load.stop()  # nothing failed while h1 went out and back
        traffic.wait_streams(30)
        for fake in hosts:
            fake.cut_streams_after = 3
        cut = traffic.open_streams(2, tokens=10, interval=0.2)
        traffic.wait_streams(30)  # both cut by their hosts before h2 stops taking connections
        hosts[1].stop_service()  # refused, and HAProxy still sends h2 its turn
        late = LbTraffic(lb, rate=30, timeout=5, max_duration=1).start()
        late.load.wait(10)
        refused = late.stop()
        result = traffic.stop()
    assert [r for r in clean if not r.ok] == [] and len(clean) > 30
    assert result.fewest_up() == 2 and result.fewest_up(0, taken_out) == 2
    assert max(len(s.up) for s in result.samples) == 3
    assert all(s.done and s.tokens == 10 and len(s.releases) == 1 for s in drained), drained
    assert result.cut == cut and [s.tokens for s in cut] == [3, 3]
    assert {r.code for r in refused.failed} == {503} and 0 < len(refused.failed) < 30
    assert "streams cut" in result.describe()


def _gone(lb: LoadBalancer) -> None:
    assert lb.process.poll() is not None
    assert not Path(f"/proc/{lb.pid}").exists() or "haproxy" not in Path(
        f"/proc/{lb.pid}/cmdline"
    ).read_text(errors="replace")
    assert not lb.directory.exists()  # config, socket and pid file with it


def test_nothing_is_left_after_the_block(hosts: list[FakeHost]) -> None:
    with haproxy(backends(hosts), check_for(hosts)) as lb:
        assert lb.config.is_file() and lb.admin_socket.is_socket()
        assert (lb.directory / "haproxy.pid").read_text().strip() == str(lb.pid)
        assert Path(f"/proc/{lb.pid}/cmdline").read_text().startswith("haproxy")
    _gone(lb)


def test_nothing_is_left_when_the_block_fails(hosts: list[FakeHost]) -> None:
    seen: list[LoadBalancer] = []
    fake = backends(hosts)
    with pytest.raises(RuntimeError, match="test failed"), haproxy(fake, check_for(hosts)) as lb:
        seen.append(lb)
        raise RuntimeError("the test failed")
    _gone(seen[0])
    # an interrupted run (Ctrl-C, or the bench's SIGTERM handler)
    with pytest.raises(KeyboardInterrupt), haproxy(fake, check_for(hosts)) as lb:
        seen.append(lb)
        os.kill(os.getpid(), 2)
        time.sleep(5)
    _gone(seen[1])
