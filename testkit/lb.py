"""The sandbox's load balancer: HAProxy (Debian's package) in front of sandbox hosts, run as a
process of our own in the root namespace (the deployer's side of the sandbox network),
listening on a loopback port.

It checks hosts the way a GCP backend service does: an HTTP GET of the health path on the
health port every `interval_s`, `threshold` answers in a row (200 is healthy, anything else or
no answer is not) to take a host out or put it back (GCP's defaults: 5 s x 2). A request that
fails is not retried and not sent to another host (a real load balancer does not replay a cut
POST); connections open on a host it takes out are left to finish (GCP's connection draining),
with long client and server timeouts so that streams live. Its admin socket tells each host's
UP/DOWN state.

`haproxy(backends, check)` is a context manager: the config, the process (ended by its PID)
and the socket are gone on every way out of it, a failing test's included.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testkit.guard import check_address

HAPROXY = "haproxy"
LOOPBACK = "127.0.0.1"
# GCP's backend service timeout is 30 s by default and a stream of a minute is a normal answer
# here: the load balancer must never be what ends one.
STREAM_TIMEOUT_S = 600
START_TIMEOUT_S = 10.0


class LoadBalancerError(RuntimeError):
    """HAProxy could not be started or asked."""


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
    backends: Sequence[Backend], check: HealthCheck, *, port: int, admin_socket: Path
) -> str:
    """HAProxy's config: a frontend on LOOPBACK:PORT, one round-robin backend of BACKENDS
    checked by CHECK, no retry and no redispatch, long timeouts, an admin socket."""
    if not backends:
        raise ValueError("a load balancer needs at least one backend")
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must differ: {names}")
    timeout = _ms(check.timeout_s or check.interval_s)
    servers = "\n".join(
        f"    server {b.name} {check_address(b.address)}:{b.port} check port {check.port}"
        for b in backends
    )
    return f"""\
global
    maxconn 4096
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


@dataclass
class LoadBalancer:
    """A running HAProxy: where it listens, its files, its process."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    check: HealthCheck
    backends: tuple[Backend, ...]

    @property
    def address(self) -> str:
        return LOOPBACK

    @property
    def admin_socket(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def config(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def pid(self) -> int:
        return self.process.pid

    def ask(self, command: str, timeout: float = 5.0) -> str:
        """COMMAND's answer on the admin socket."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.admin_socket))
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise LoadBalancerError(f"HAProxy's admin socket {self.admin_socket}: {exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def states(self) -> dict[str, ServerState]:
        """Each host's state now, by name."""
        return {s.name: s for s in parse_stat(self.ask("show stat"))}

    def in_service(self) -> list[str]:
        """The hosts HAProxy sends new requests to now."""
        return [name for name, s in self.states().items() if s.in_service]

    def wait_for(self, names: Sequence[str], timeout: float) -> None:
        """Wait until exactly NAMES are in service, or raise after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while sorted(seen := self.in_service()) != sorted(names):
            if self.process.poll() is not None:
                raise LoadBalancerError(f"HAProxy exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise LoadBalancerError(
                    f"after {timeout:.0f} s HAProxy has {sorted(seen)} in service, not "
                    f"{sorted(names)}: {self.states()}"
                )
            time.sleep(0.1)


def _start(lb: LoadBalancer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not lb.admin_socket.exists():
        if lb.process.poll() is not None or time.monotonic() > deadline:
            log = (lb.directory / "haproxy.log").read_text(errors="replace")
            raise LoadBalancerError(f"HAProxy did not start on port {lb.port}:\n{log}")
        time.sleep(0.02)


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to our HAProxy by its PID, SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def haproxy(
    backends: Sequence[Backend], check: HealthCheck | None = None, *, port: int | None = None
) -> Iterator[LoadBalancer]:
    """HAProxy in front of BACKENDS on a loopback PORT (a free one when None), for the block;
    its process, config and socket are gone after it, on every way out."""
    if shutil.which(HAPROXY) is None:
        raise LoadBalancerError("haproxy is not installed: `apt-get install -y haproxy`")
    check = check or HealthCheck()
    directory = Path(tempfile.mkdtemp(prefix="ai-deploy-lb-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        port = port or free_port()
        socket_path = directory / "admin.sock"
        config = directory / "haproxy.cfg"
        config.write_text(render_config(backends, check, port=port, admin_socket=socket_path))
        with (directory / "haproxy.log").open("wb") as log:
            # -db: in the foreground, not the Debian service: this process is ours to end
            process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (directory / "haproxy.pid").write_text(f"{process.pid}\n")
        lb = LoadBalancer(port, directory, process, check, tuple(backends))
        _start(lb)
        yield lb
    finally:
        if process is not None:
            _end(process)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Sample:
    """The hosts in service at one moment (seconds on the sampler's clock)."""

    at: float
    up: tuple[str, ...]
    error: str = ""


@dataclass
class UpSampler:
    """Reads which hosts are in service every EVERY_S seconds in a thread while it runs."""

    lb: LoadBalancer
    every_s: float = 0.25
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> UpSampler:
        self._thread = threading.Thread(target=self._run, daemon=True, name="lb-sampler")
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            at = time.monotonic() - self.t0
            try:
                self.samples.append(Sample(at, tuple(self.lb.in_service())))
            except LoadBalancerError as exc:
                self.samples.append(Sample(at, (), str(exc)))
            if self._stop.wait(self.every_s):
                return

    def fewest_up(self, start: float = 0.0, end: float = float("inf")) -> int:
        return fewest_up(self.samples, start, end)


def fewest_up(samples: Sequence[Sample], start: float = 0.0, end: float = float("inf")) -> int:
    """The fewest hosts in service at a sample from START to END (0 when none was taken)."""
    return min((len(s.up) for s in samples if start <= s.at <= end), default=0)
