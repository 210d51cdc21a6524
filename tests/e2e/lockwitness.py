"""A health URL on loopback that stands in for the outside health check's target and, on each
request, reads which hosts have their deploy lock taken at that moment: how the e2e tests see
that a run holds its locks while the outside check asks."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import APP_ROOT, read_host

LOCK = f"{APP_ROOT}/.deploy.lock"


class LockWitness:
    """Answers STATUS on every request, after reading each of HOSTS' lock: `seen` holds one
    tuple of "held" flags (in HOSTS' order) per request."""

    def __init__(self, hosts: Sequence[Sandbox], status: int) -> None:
        self.hosts, self.status = list(hosts), status
        self.seen: list[tuple[bool, ...]] = []
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                script = f"test -d {shlex.quote(LOCK)} && echo HELD || true"
                held = tuple("HELD" in read_host(h, script, "the lock") for h in witness.hosts)
                witness.seen.append(held)
                body = b"ok\n" if witness.status == 200 else b"not healthy from outside\n"
                self.send_response(witness.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"

    @property
    def always_held(self) -> bool:
        """Whether every host's lock was there on every request (and there was one)."""
        return bool(self.seen) and all(all(held) for held in self.seen)


@contextmanager
def lock_witness(hosts: Sequence[Sandbox], status: int = 200) -> Iterator[LockWitness]:
    """A LockWitness for the block, shut down on every way out."""
    witness = LockWitness(hosts, status)
    try:
        yield witness
    finally:
        witness.server.shutdown()
        witness.server.server_close()


def lock_left(host: Sandbox) -> bool:
    """Whether HOST's deploy lock is still there."""
    return "LEFT" in read_host(host, f"test -e {shlex.quote(LOCK)} && echo LEFT || true", "lock")
