"""The sandbox's load balancer for tests and the bench: HAProxy (Debian's package) in front of
sandbox hosts, its config and stats from ai_deploy.sandbox.lb, run as a process of the test's
own in the root namespace (the deployer's side of the sandbox network), listening on a
loopback port. Connections open on a host it takes out are left to finish (GCP's connection
draining). Its admin socket tells each host's UP/DOWN state.

`haproxy(backends, check)` is a context manager: the config, the process (ended by its PID)
and the socket are gone on every way out of it, a failing test's included.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ai_deploy.sandbox.lb import (
    HAPROXY,
    LOOPBACK,
    START_TIMEOUT_S,
    Backend,
    HealthCheck,
    LoadBalancerError,
    ServerState,
    ask,
    free_port,
    parse_stat,
    render_config,
)
from testkit.guard import check_address

__all__ = [
    "Backend", "HealthCheck", "LoadBalancer", "LoadBalancerError", "Sample", "ServerState",
    "UpSampler", "fewest_up", "free_port", "haproxy", "parse_stat", "render_config",
]  # fmt: skip


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
        return ask(self.admin_socket, command, timeout)

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
        for b in backends:
            check_address(b.address)
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
