"""The sandbox's load balancer as data: HAProxy's config (in front of sandbox hosts, checking
them the way a GCP backend service does: an HTTP GET of the health path on the health port
every `interval_s`, `threshold` answers in a row to take a host out or put it back, GCP's
defaults 5 s x 2; no retry and no redispatch of a failed request, as a real load balancer does
not replay a cut POST; long timeouts so that streams live) and what its admin socket says of
each host. ai_deploy.sandbox.balancer runs it for `ai-deploy sandbox lb`; testkit.lb for the
tests and the bench."""

from __future__ import annotations

import csv
import io
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.sandbox.network import NETWORK

HAPROXY = "haproxy"
LOOPBACK = "127.0.0.1"
# GCP's backend service timeout is 30 s by default and a stream of a minute is a normal answer
# here: the load balancer must never be what ends one.
STREAM_TIMEOUT_S = 600
START_TIMEOUT_S = 10.0


class LoadBalancerError(RuntimeError):
    """HAProxy could not be started, asked or stopped."""


@dataclass(frozen=True)
class HealthCheck:
    """How the load balancer checks a host (GCP's defaults: GET every 5 s, 2 in a row)."""

    path: str = "/lb-health"
    port: int = 8000
    interval_s: float = 5.0
    threshold: int = 2  # answers in a row to go DOWN (fall) and to come back UP (rise)
    timeout_s: float | None = None  # an answer slower than this is a failed check; None: interval

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or any(c.isspace() for c in self.path):
            raise ValueError(f"health path {self.path!r} must start with / and hold no spaces")
        if self.interval_s <= 0 or self.threshold < 1:
            raise ValueError(
                f"health check every {self.interval_s} s, {self.threshold} in a row: the "
                "interval must be positive and the threshold at least 1"
            )

    @property
    def detection_s(self) -> float:
        """How long the load balancer needs, at most, to see a host go down or come back."""
        return self.interval_s * self.threshold


@dataclass(frozen=True)
class Backend:
    """One host behind the load balancer: its name in HAProxy's stats and where it serves."""

    name: str
    address: str
    port: int = 8000


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def render_config(
    backends: Sequence[Backend],
    check: HealthCheck,
    *,
    port: int,
    admin_socket: Path,
    pid_file: Path | None = None,
) -> str:
    """HAProxy's config: a frontend on LOOPBACK:PORT, one round-robin backend of BACKENDS
    (sandbox guests) checked by CHECK, no retry and no redispatch, long timeouts, an admin
    socket; PID_FILE: where a daemon HAProxy writes its pid."""
    if not backends:
        raise ValueError("a load balancer needs at least one backend")
    outside = [b.address for b in backends if not _sandbox_or_loopback(b.address)]
    if outside:
        raise ValueError(
            f"only sandbox hosts (or loopback) go behind the sandbox load balancer, not {outside}"
        )
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must differ: {names}")
    timeout = _ms(check.timeout_s or check.interval_s)
    servers = "\n".join(
        f"    server {b.name} {b.address}:{b.port} check port {check.port}" for b in backends
    )
    return f"""\
global
    maxconn 4096{f"{chr(10)}    pidfile {pid_file}" if pid_file else ""}
    stats socket {admin_socket} mode 600 level admin
    stats timeout 10s

defaults
    mode http
    timeout connect 5s
    timeout client {STREAM_TIMEOUT_S}s
    timeout server {STREAM_TIMEOUT_S}s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout check {timeout}ms
    retries 0
    no option redispatch

frontend sandbox_lb
    bind {LOOPBACK}:{port}
    default_backend hosts

backend hosts
    balance roundrobin
    option httpchk
    http-check send meth GET uri {check.path} ver HTTP/1.1 hdr Host sandbox-lb
    http-check expect status 200
    default-server inter {_ms(check.interval_s)} fall {check.threshold} rise {check.threshold}
{servers}
"""


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerState:
    """One host as HAProxy's stats say: `status` is UP, DOWN, "UP 1/2" (failing checks, still
    in service), "DOWN 1/2" (passing checks, not yet back), MAINT, ..."""

    name: str
    status: str
    sessions: int

    @property
    def in_service(self) -> bool:
        return self.status.startswith("UP")


def parse_stat(text: str) -> list[ServerState]:
    """The servers (not frontends or backends) in `show stat`'s CSV."""
    reader = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [
        ServerState(row["svname"], row["status"], int(row["scur"] or 0))
        for row in reader
        if row.get("type") == "2"
    ]


def _sandbox_or_loopback(address: str) -> bool:
    """A literal address in the sandbox network or on loopback (a name is never looked up)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_loopback or ip in ipaddress.ip_network(NETWORK)


def ask(admin_socket: Path, command: str, timeout: float = 5.0) -> str:
    """COMMAND's answer on HAProxy's ADMIN_SOCKET."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise LoadBalancerError(f"HAProxy's admin socket {admin_socket}: {exc}") from exc
    return b"".join(chunks).decode(errors="replace")
