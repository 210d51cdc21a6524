"""The HTTP side of the fake: one `ThreadingHTTPServer` on 127.0.0.1, the route table that
sends each path to its API part, the request log and fault injection.

`FakeGcp` is the server plus its state; the API parts it is made of live next to this module
(compute, instance_lists, operations, sts, iam, oauth, oslogin) and share `FakeCore` (state.py).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.gcp.compute import ComputeApi
from tests.fakes.gcp.guest import GuestAttributesApi
from tests.fakes.gcp.iam import IamApi
from tests.fakes.gcp.instance_lists import InstanceListsApi
from tests.fakes.gcp.oauth import OAuthApi
from tests.fakes.gcp.operations import OperationPlan
from tests.fakes.gcp.oslogin import OsLoginApi
from tests.fakes.gcp.project import ProjectApi
from tests.fakes.gcp.state import FakeState
from tests.fakes.gcp.sts import StsApi
from tests.fakes.gcp.wire import ApiError, RecordedRequest, Route, google_error_body


@dataclass
class Fault:
    """What to do instead of (or before) the normal answer for matching requests."""

    method: str
    pattern: re.Pattern[str]
    status: int | None = None
    reason: str = "backendError"
    message: str = "Internal error. Please try again or contact Google Support."
    body: dict[str, Any] | None = None
    times: int | None = 1
    before: Callable[[RecordedRequest], None] | None = None
    delay: float = 0.0
    # Apply the request normally, then answer with the fault (the answer was lost).
    applied: bool = False
    # Apply the request at once and answer normally, but only this many seconds later (the
    # window where Compute accepted a write and the caller does not know it yet).
    answer_delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method.upper() and bool(self.pattern.search(path))


class FakeGcp(
    ComputeApi,
    InstanceListsApi,
    GuestAttributesApi,
    ProjectApi,
    StsApi,
    IamApi,
    OAuthApi,
    OsLoginApi,
):
    """The server plus its state, request log and fault injection."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.listeners: list[Callable[[str], None]] = []
        self._faults: list[Fault] = []
        self._plans: list[OperationPlan] = []
        self._request_ids: dict[tuple[str, str, str], str] = {}
        self.operation_seconds = 0.0
        self.wait_max_s = 120.0
        self.wait_returns_at_once = False
        self._ids = itertools.count(1000)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._routes = self._build_routes()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeGcp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()
        return self

    def _tick(self) -> None:
        """Operations progress with time, not only when someone polls them."""
        while not self._stopping.wait(0.02):
            with self.lock:
                self._advance_operations()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def compute_endpoint(self) -> str:
        return self.url

    @property
    def oslogin_endpoint(self) -> str:
        return f"{self.url}/oslogin"

    # -- test controls -------------------------------------------------------------------------

    def inject(
        self,
        method: str,
        path: str,
        *,
        status: int | None = 500,
        reason: str = "backendError",
        message: str = "Internal error. Please try again or contact Google Support.",
        body: dict[str, Any] | None = None,
        times: int | None = 1,
        before: Callable[[RecordedRequest], None] | None = None,
        delay: float = 0.0,
        applied: bool = False,
        answer_delay: float = 0.0,
    ) -> Fault:
        """Answer the next `times` requests matching METHOD and PATH (a regex searched in the
        path) with STATUS and Google's error body (or BODY); `status=None` keeps the normal
        answer and only runs BEFORE / waits DELAY first. `times=None` means every time.
        APPLIED: the request still takes effect, only its answer is the error (as when a
        load balancer loses the reply); a DELAY longer than the client's timeout is a timeout.
        ANSWER_DELAY (with `status=None`): the request takes effect at once, its normal answer
        leaves that many seconds later."""
        fault = Fault(
            method=method.upper(),
            pattern=re.compile(path),
            status=status,
            reason=reason,
            message=message,
            body=body,
            times=times,
            before=before,
            delay=delay,
            applied=applied,
            answer_delay=answer_delay,
        )
        with self.lock:
            self._faults.append(fault)
        return fault

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with METHOD whose path matches the regex PATH."""
        pattern = re.compile(path)
        with self.lock:
            return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    # -- internals -----------------------------------------------------------------------------

    def _build_routes(self) -> list[Route]:
        p = r"/compute/v1/projects/(?P<project>[^/]+)"
        z = p + r"/zones/(?P<zone>[^/]+)"
        return [
            ("GET", re.compile(p), self._projects_get),
            ("GET", re.compile(p + r"/global/firewalls"), self._firewalls_list),
            ("POST", re.compile(p + r"/global/firewalls"), self._firewalls_insert),
            ("GET", re.compile(p + r"/global/firewalls/(?P<name>[^/]+)"), self._firewalls_get),
            (
                "DELETE",
                re.compile(p + r"/global/firewalls/(?P<name>[^/]+)"),
                self._firewalls_delete,
            ),
            ("GET", re.compile(p + r"/global/operations/(?P<op>[^/]+)"), self._operation_poll),
            (
                "POST",
                re.compile(p + r"/global/operations/(?P<op>[^/]+)/wait"),
                self._operation_wait,
            ),
            ("GET", re.compile(z + r"/operations/(?P<op>[^/]+)"), self._operation_poll),
            ("POST", re.compile(z + r"/operations/(?P<op>[^/]+)/wait"), self._operation_wait),
            ("GET", re.compile(z + r"/instances/(?P<name>[^/]+)"), self._instances_get),
            ("GET", re.compile(z + r"/instances"), self._instances_list),
            ("GET", re.compile(p + r"/aggregated/instances"), self._instances_aggregated_list),
            (
                "POST",
                re.compile(z + r"/instances/(?P<name>[^/]+)/setMetadata"),
                self._instances_set_metadata,
            ),
            ("GET", re.compile(r"/github/oidc"), self._github_oidc),
            (
                "GET",
                re.compile(r"/github/api/repos/(?P<repo>[^/]+/[^/]+)/actions/runs/(?P<run>\d+)"),
                self._github_run,
            ),
            ("POST", re.compile(r"/sts/v1/token"), self._sts_token),
            (
                "POST",
                re.compile(
                    r"/iam/v1/projects/-/serviceAccounts/(?P<sa>[^/:]+):generateAccessToken"
                ),
                self._iam_generate_access_token,
            ),
            ("POST", re.compile(r"/oauth2/token"), self._oauth2_token),
            (
                "POST",
                re.compile(r"/oslogin/v1/users/(?P<user>[^/:]+):importSshPublicKey"),
                self._oslogin_import,
            ),
            (
                "DELETE",
                re.compile(r"/oslogin/v1/users/(?P<user>[^/]+)/sshPublicKeys/(?P<fp>[^/]+)"),
                self._oslogin_delete,
            ),
            (
                "GET",
                re.compile(r"/oslogin/v1/users/(?P<user>[^/]+)/loginProfile"),
                self._oslogin_profile,
            ),
            (
                "GET",
                re.compile(z + r"/instances/(?P<name>[^/]+)/getGuestAttributes"),
                self._instances_guest_attributes,
            ),
        ]

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        with self.lock:
            self.requests.append(request)
            fault = next((f for f in self._faults if f.matches(request.method, request.path)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        status: int
        payload: dict[str, Any]
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.before is not None:
                fault.before(request)
        if fault is not None and fault.status is not None:
            if fault.applied:
                self._route(request)
            status = fault.status
            payload = fault.body or google_error_body(fault.status, fault.reason, fault.message)
        else:
            status, payload = self._route(request)
            if fault is not None and fault.answer_delay:
                time.sleep(fault.answer_delay)
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json; charset=UTF-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            # The client gave up (its timeout); the request still took effect, as on Google.
            handler.close_connection = True

    def _route(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        known_path = False
        for method, pattern, func in self._routes:
            match = pattern.fullmatch(request.path)
            if not match:
                continue
            known_path = True
            if method != request.method:
                continue
            try:
                if request.path.startswith(("/compute/", "/oslogin/")):
                    self._check_bearer(request)
                if func == self._operation_wait:
                    # Blocks: takes the lock itself, between looks at the operation.
                    return func(request, **match.groupdict())
                with self.lock:
                    if request.path.startswith("/compute/") and request.method != "GET":
                        replayed = self._replayed_operation(request)
                        if replayed is not None:
                            return 200, replayed
                    return func(request, **match.groupdict())
            except ApiError as exc:
                if exc.oauth:
                    return exc.status, {"error": exc.reason, "error_description": exc.message}
                return exc.status, google_error_body(exc.status, exc.reason, exc.message)
        if known_path:
            return 405, google_error_body(405, "httpMethodNotAllowed", "Method not allowed")
        return 404, google_error_body(404, "notFound", f"No route for {request.path}")


@contextmanager
def running_fake(state: FakeState | None = None) -> Iterator[FakeGcp]:
    """Start a fake for the duration of the block."""
    fake = FakeGcp(state).start()
    try:
        yield fake
    finally:
        fake.stop()


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return path
