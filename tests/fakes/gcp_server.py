"""A stateful loopback server that speaks the Google APIs' wire formats the deploy uses.

One `http.server.ThreadingHTTPServer` on 127.0.0.1 serves, under distinct path prefixes:

- ``/compute/v1/...``: Compute Engine REST (firewalls insert/get/delete/list, instances get and
  setMetadata, global and zone operations get/wait), with the real error body shape
  ``{"error": {"code", "message", "errors": [{"reason", ...}], "status"}}``;
- ``/github/oidc``: the GitHub Actions OIDC token URL (checks the bearer request token);
- ``/sts/v1/token``: the Security Token Service token exchange;
- ``/iam/v1/projects/-/serviceAccounts/SA:generateAccessToken``: IAM Credentials;
- ``/oauth2/token``: the OAuth token endpoint (service-account JWT and refresh-token grants);
- ``/oslogin/v1/users/...``: OS Login import/delete of SSH public keys.

Compute and OS Login calls need ``Authorization: Bearer <token>`` with a token this server
issued for the cloud-platform scope (an STS token asked for with the IAM scope only is
refused, as Google refuses it). Every request is recorded; faults (status + error body, a hook
that runs first, a delay) and slow or failing operations can be injected per method and path
pattern. Mutations return operations whose effect is applied when the operation is DONE, so
a client that does not wait for its operation sees the old state.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

GOOGLE_LINK_BASE = "https://www.googleapis.com/compute/v1/"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
FIREWALL_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


def rfc3339(moment: datetime) -> str:
    """Compute's timestamp style: milliseconds and a numeric offset."""
    return moment.isoformat(timespec="milliseconds")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


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

    def matches(self, method: str, path: str) -> bool:
        return method == self.method.upper() and bool(self.pattern.search(path))


@dataclass
class OperationPlan:
    """How operations started by matching requests behave."""

    method: str
    pattern: re.Pattern[str]
    running_polls: int = 0
    error: dict[str, Any] | None = None
    times: int | None = 1

    def matches(self, method: str, path: str) -> bool:
        return method == self.method.upper() and bool(self.pattern.search(path))


@dataclass
class FakeOperation:
    body: dict[str, Any]
    remaining_polls: int
    effect: Callable[[], None] | None
    error: dict[str, Any] | None
    zone: str | None


@dataclass
class FakeInstance:
    """The one VM the fake knows; fields mirror what instances.get returns."""

    name: str = "ai-server-prod"
    zone: str = "asia-northeast3-a"
    nat_ip: str | None = "10.201.0.10"
    internal_ip: str = "10.178.0.2"
    network: str = "default"
    tags: list[str] = field(default_factory=lambda: ["ai-server"])
    metadata: dict[str, str] = field(default_factory=dict)
    fingerprint: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(8)).decode()
    )
    status: str = "RUNNING"

    def new_fingerprint(self) -> None:
        self.fingerprint = base64.b64encode(secrets.token_bytes(8)).decode()


@dataclass
class FakeState:
    """Everything the fake holds; tests read and change it directly (under `FakeGcp.lock`)."""

    project: str = "dojangkok-ai"
    project_number: str = "123456789012"
    pool: str = "github-pool"
    provider: str = "github-provider"
    service_account: str = "github-actions@dojangkok-ai.iam.gserviceaccount.com"
    github_request_token: str = "gh-request-token"
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    instance: FakeInstance = field(default_factory=FakeInstance)
    operations: dict[str, FakeOperation] = field(default_factory=dict)
    # access token -> scopes and who it belongs to
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    # OS Login: user email -> fingerprint -> key record
    oslogin_keys: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    oidc_tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    firewall_page_size: int = 500

    @property
    def audience(self) -> str:
        return (
            f"//iam.googleapis.com/projects/{self.project_number}/locations/global/"
            f"workloadIdentityPools/{self.pool}/providers/{self.provider}"
        )

    @property
    def workload_identity_provider(self) -> str:
        return self.audience.removeprefix("//iam.googleapis.com/")


class ApiError(Exception):
    """Raised inside a handler to answer with Google's error body."""

    def __init__(self, status: int, reason: str, message: str, *, oauth: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.oauth = oauth


def google_error_body(status: int, reason: str, message: str) -> dict[str, Any]:
    """The JSON error body Google APIs send (`code`, `message`, `errors[].reason`, `status`)."""
    status_names = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ALREADY_EXISTS",
        412: "FAILED_PRECONDITION",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": status_names.get(status, "UNKNOWN"),
        }
    }


Route = tuple[str, re.Pattern[str], Callable[..., tuple[int, dict[str, Any]]]]


class FakeGcp:
    """The server plus its state, request log and fault injection."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.listeners: list[Callable[[str], None]] = []
        self._faults: list[Fault] = []
        self._plans: list[OperationPlan] = []
        self._ids = itertools.count(1000)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
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
        return self

    def stop(self) -> None:
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
    ) -> Fault:
        """Answer the next `times` requests matching METHOD and PATH (a regex searched in the
        path) with STATUS and Google's error body (or BODY); `status=None` keeps the normal
        answer and only runs BEFORE / waits DELAY first. `times=None` means every time."""
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
        )
        with self.lock:
            self._faults.append(fault)
        return fault

    def plan_operations(
        self,
        method: str,
        path: str,
        *,
        running_polls: int = 0,
        error: dict[str, Any] | None = None,
        times: int | None = 1,
    ) -> None:
        """Operations started by matching requests come back RUNNING and turn DONE on the
        `running_polls`-th get/wait; with ERROR (`{"code","message","http_status"}`) they end
        DONE with that error and without their effect."""
        with self.lock:
            self._plans.append(
                OperationPlan(method.upper(), re.compile(path), running_polls, error, times)
            )

    def add_firewall(
        self, name: str, *, created: datetime | None = None, source_ranges: list[str] | None = None
    ) -> dict[str, Any]:
        """Put a firewall rule straight into the state (for example an old leftover)."""
        created = created or datetime.now(timezone.utc)
        body = {
            "name": name,
            "network": "global/networks/default",
            "direction": "INGRESS",
            "sourceRanges": source_ranges or ["192.0.2.1/32"],
            "targetTags": ["ai-server"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
        }
        with self.lock:
            resource = self._firewall_resource(self.state.project, body, created)
            self.state.firewalls[name] = resource
        self._notify("firewalls")
        return resource

    def set_metadata(self, key: str, value: str | None) -> None:
        """Change one instance metadata item as someone else would (new fingerprint)."""
        with self.lock:
            if value is None:
                self.state.instance.metadata.pop(key, None)
            else:
                self.state.instance.metadata[key] = value
            self.state.instance.new_fingerprint()
        self._notify("metadata")

    def issue_token(
        self, *, scopes: tuple[str, ...] = (CLOUD_PLATFORM_SCOPE,), who: str = ""
    ) -> str:
        """A fresh access token the fake accepts (for tests that need no token exchange)."""
        token = "ya29.fake-" + secrets.token_urlsafe(16)
        with self.lock:
            self.state.tokens[token] = {"scopes": set(scopes), "who": who or "static"}
        return token

    def issue_refresh_token(self) -> str:
        token = "1//fake-refresh-" + secrets.token_urlsafe(8)
        with self.lock:
            self.state.refresh_tokens.add(token)
        return token

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with METHOD whose path matches the regex PATH."""
        pattern = re.compile(path)
        with self.lock:
            return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    def github_oidc_url(self) -> str:
        """What ACTIONS_ID_TOKEN_REQUEST_URL looks like on a runner (already has a query)."""
        return f"{self.url}/github/oidc?api-version=2.0"

    def github_env(self) -> dict[str, str]:
        """The variables a GitHub job with `id-token: write` has."""
        return {
            "ACTIONS_ID_TOKEN_REQUEST_URL": self.github_oidc_url(),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": self.state.github_request_token,
        }

    def external_account_info(
        self,
        *,
        service_account: str | None,
        request_token: str | None = None,
        audience: str | None = None,
    ) -> dict[str, Any]:
        """The `external_account` JSON google-github-actions/auth writes, pointed at this
        server: token_url, the impersonation URL (when SERVICE_ACCOUNT) and the OIDC URL."""
        audience = audience or self.state.audience
        oidc_audience = "https://iam.googleapis.com/" + audience.removeprefix(
            "//iam.googleapis.com/"
        )
        info: dict[str, Any] = {
            "type": "external_account",
            "audience": audience,
            "subject_token_type": JWT_TOKEN_TYPE,
            "token_url": f"{self.url}/sts/v1/token",
            "credential_source": {
                "url": f"{self.github_oidc_url()}&audience={quote(oidc_audience, safe='')}",
                "headers": {
                    "Authorization": f"Bearer {request_token or self.state.github_request_token}"
                },
                "format": {"type": "json", "subject_token_field_name": "value"},
            },
        }
        if service_account:
            info["service_account_impersonation_url"] = (
                f"{self.url}/iam/v1/projects/-/serviceAccounts/"
                f"{service_account}:generateAccessToken"
            )
        return info

    # -- internals -----------------------------------------------------------------------------

    def _notify(self, what: str) -> None:
        for listener in list(self.listeners):
            listener(what)

    def _build_routes(self) -> list[Route]:
        p = r"/compute/v1/projects/(?P<project>[^/]+)"
        z = p + r"/zones/(?P<zone>[^/]+)"
        return [
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
                self._operation_poll,
            ),
            ("GET", re.compile(z + r"/operations/(?P<op>[^/]+)"), self._operation_poll),
            ("POST", re.compile(z + r"/operations/(?P<op>[^/]+)/wait"), self._operation_poll),
            ("GET", re.compile(z + r"/instances/(?P<name>[^/]+)"), self._instances_get),
            (
                "POST",
                re.compile(z + r"/instances/(?P<name>[^/]+)/setMetadata"),
                self._instances_set_metadata,
            ),
            ("GET", re.compile(r"/github/oidc"), self._github_oidc),
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
            status = fault.status
            payload = fault.body or google_error_body(fault.status, fault.reason, fault.message)
        else:
            status, payload = self._route(request)
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

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
                with self.lock:
                    return func(request, **match.groupdict())
            except ApiError as exc:
                if exc.oauth:
                    return exc.status, {"error": exc.reason, "error_description": exc.message}
                return exc.status, google_error_body(exc.status, exc.reason, exc.message)
        if known_path:
            return 405, google_error_body(405, "httpMethodNotAllowed", "Method not allowed")
        return 404, google_error_body(404, "notFound", f"No route for {request.path}")

    def _check_bearer(self, request: RecordedRequest) -> None:
        header = request.authorization or ""
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        with self.lock:
            grant = self.state.tokens.get(token or "") or _self_signed_jwt_grant(token or "")
        if grant is None:
            raise ApiError(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        if CLOUD_PLATFORM_SCOPE not in grant["scopes"]:
            raise ApiError(
                403,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
            )

    def _check_project(self, project: str) -> None:
        if project not in (self.state.project, self.state.project_number):
            raise ApiError(404, "notFound", f"The resource 'projects/{project}' was not found")

    # -- operations ----------------------------------------------------------------------------

    def _start_operation(
        self,
        request: RecordedRequest,
        *,
        project: str,
        operation_type: str,
        target_link: str,
        effect: Callable[[], None] | None,
        zone: str | None = None,
    ) -> dict[str, Any]:
        plan = next((p for p in self._plans if p.matches(request.method, request.path)), None)
        if plan is not None and plan.times is not None:
            plan.times -= 1
            if plan.times <= 0:
                self._plans.remove(plan)
        now = datetime.now(timezone.utc)
        op_id = next(self._ids)
        name = f"operation-{int(now.timestamp() * 1000)}-{secrets.token_hex(6)}"
        scope = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}/global"
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(op_id),
            "name": name,
            "operationType": operation_type,
            "targetLink": target_link,
            "targetId": str(op_id + 1),
            "status": "PENDING",
            "user": "fake@dojangkok-ai.iam.gserviceaccount.com",
            "progress": 0,
            "insertTime": rfc3339(now),
            "startTime": rfc3339(now),
            "selfLink": f"{GOOGLE_LINK_BASE}{scope}/operations/{name}",
        }
        if zone:
            body["zone"] = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}"
        op = FakeOperation(
            body=body,
            remaining_polls=plan.running_polls if plan else 0,
            effect=effect,
            error=plan.error if plan else None,
            zone=zone,
        )
        self.state.operations[name] = op
        if op.remaining_polls > 0:
            body["status"] = "RUNNING"
        else:
            self._finish_operation(op)
        return dict(body)

    def _finish_operation(self, op: FakeOperation) -> None:
        op.body["status"] = "DONE"
        op.body["progress"] = 100
        op.body["endTime"] = rfc3339(datetime.now(timezone.utc))
        if op.error is not None:
            op.body["error"] = {
                "errors": [
                    {"code": op.error.get("code", "INTERNAL_ERROR"), "message": op.error["message"]}
                ]
            }
            op.body["httpErrorStatusCode"] = op.error.get("http_status", 400)
            op.body["httpErrorMessage"] = HTTPStatus(op.body["httpErrorStatusCode"]).phrase.upper()
        elif op.effect is not None:
            op.effect()

    def _operation_poll(
        self, request: RecordedRequest, project: str, op: str, zone: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        operation = self.state.operations.get(op)
        if operation is None or operation.zone != zone:
            raise ApiError(404, "notFound", f"The resource '{request.path}' was not found")
        if operation.body["status"] != "DONE":
            operation.remaining_polls -= 1
            if operation.remaining_polls <= 0:
                self._finish_operation(operation)
        return 200, dict(operation.body)

    # -- firewalls -----------------------------------------------------------------------------

    def _firewall_resource(
        self, project: str, body: dict[str, Any], created: datetime
    ) -> dict[str, Any]:
        network = body.get("network") or "global/networks/default"
        if not network.startswith("https://"):
            if network.startswith("global/"):
                network = f"projects/{project}/{network}"
            elif "/" not in network:
                network = f"projects/{project}/global/networks/{network}"
            network = GOOGLE_LINK_BASE + network
        resource = {
            "kind": "compute#firewall",
            "id": str(next(self._ids)),
            "creationTimestamp": rfc3339(created.astimezone(timezone(timedelta(hours=-7)))),
            "name": body["name"],
            "description": body.get("description", ""),
            "network": network,
            "priority": body.get("priority", 1000),
            "sourceRanges": list(body.get("sourceRanges", [])),
            "targetTags": list(body.get("targetTags", [])),
            "allowed": body.get("allowed", []),
            "direction": body.get("direction", "INGRESS"),
            "logConfig": {"enable": False},
            "disabled": bool(body.get("disabled", False)),
            "selfLink": f"{GOOGLE_LINK_BASE}projects/{project}/global/firewalls/{body['name']}",
        }
        return {k: v for k, v in resource.items() if v != "" or k != "description"}

    def _firewalls_insert(
        self, request: RecordedRequest, project: str
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        body = request.json() or {}
        name = body.get("name", "")
        if not FIREWALL_NAME_RE.fullmatch(name):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'",
            )
        for cidr in body.get("sourceRanges", []):
            if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", cidr):
                raise ApiError(
                    400, "invalid", f"Invalid value for field 'resource.sourceRanges[0]': '{cidr}'."
                )
        if not body.get("allowed") and not body.get("denied"):
            raise ApiError(400, "invalid", "Required field 'resource.allowed' not specified")
        if name in self.state.firewalls:
            raise ApiError(
                409,
                "alreadyExists",
                f"The resource 'projects/{project}/global/firewalls/{name}' already exists",
            )
        resource = self._firewall_resource(project, body, datetime.now(timezone.utc))

        def effect() -> None:
            self.state.firewalls[name] = resource
            self._notify("firewalls")

        return 200, self._start_operation(
            request,
            project=project,
            operation_type="insert",
            target_link=resource["selfLink"],
            effect=effect,
        )

    def _firewalls_get(
        self, request: RecordedRequest, project: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        if name not in self.state.firewalls:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/global/firewalls/{name}' was not found",
            )
        return 200, dict(self.state.firewalls[name])

    def _firewalls_delete(
        self, request: RecordedRequest, project: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        _, resource = self._firewalls_get(request, project, name)

        def effect() -> None:
            self.state.firewalls.pop(name, None)
            self._notify("firewalls")

        return 200, self._start_operation(
            request,
            project=project,
            operation_type="delete",
            target_link=resource["selfLink"],
            effect=effect,
        )

    def _firewalls_list(self, request: RecordedRequest, project: str) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        items = sorted(self.state.firewalls.values(), key=lambda r: r["name"])
        filter_expr = (request.query.get("filter") or [""])[0]
        if filter_expr:
            items = [r for r in items if _filter_matches(filter_expr, r)]
        max_results = int((request.query.get("maxResults") or ["500"])[0])
        page_size = min(max_results, self.state.firewall_page_size)
        start = int((request.query.get("pageToken") or ["0"])[0])
        page = items[start : start + page_size]
        reply: dict[str, Any] = {
            "kind": "compute#firewallList",
            "id": f"projects/{project}/global/firewalls",
            "selfLink": f"{GOOGLE_LINK_BASE}projects/{project}/global/firewalls",
        }
        if page:
            reply["items"] = page
        if start + page_size < len(items):
            reply["nextPageToken"] = str(start + page_size)
        return 200, reply

    # -- instances -----------------------------------------------------------------------------

    def _instance(self, project: str, zone: str, name: str) -> FakeInstance:
        self._check_project(project)
        inst = self.state.instance
        if zone != inst.zone or name != inst.name:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
            )
        return inst

    def _instances_get(
        self, request: RecordedRequest, project: str, zone: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        inst = self._instance(project, zone, name)
        zone_link = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}"
        interface: dict[str, Any] = {
            "kind": "compute#networkInterface",
            "name": "nic0",
            "network": f"{GOOGLE_LINK_BASE}projects/{project}/global/networks/{inst.network}",
            "networkIP": inst.internal_ip,
            "stackType": "IPV4_ONLY",
        }
        if inst.nat_ip is not None:
            interface["accessConfigs"] = [
                {
                    "kind": "compute#accessConfig",
                    "type": "ONE_TO_ONE_NAT",
                    "name": "External NAT",
                    "natIP": inst.nat_ip,
                    "networkTier": "PREMIUM",
                }
            ]
        metadata: dict[str, Any] = {"kind": "compute#metadata", "fingerprint": inst.fingerprint}
        if inst.metadata:
            metadata["items"] = [{"key": k, "value": v} for k, v in inst.metadata.items()]
        tags: dict[str, Any] = {"fingerprint": "42WmSpB8rSM="}
        if inst.tags:
            tags["items"] = list(inst.tags)
        return 200, {
            "kind": "compute#instance",
            "id": "4567890123456789012",
            "creationTimestamp": "2024-03-01T09:00:00.000-08:00",
            "name": inst.name,
            "tags": tags,
            "machineType": f"{zone_link}/machineTypes/g2-standard-4",
            "status": inst.status,
            "zone": f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}",
            "networkInterfaces": [interface],
            "metadata": metadata,
            "selfLink": f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}/instances/{inst.name}",
        }

    def _instances_set_metadata(
        self, request: RecordedRequest, project: str, zone: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        inst = self._instance(project, zone, name)
        body = request.json() or {}
        if body.get("fingerprint") != inst.fingerprint:
            raise ApiError(
                412,
                "conditionNotMet",
                "Supplied fingerprint does not match current metadata fingerprint.",
            )
        items = {item["key"]: item.get("value", "") for item in body.get("items", [])}
        inst.new_fingerprint()

        def effect() -> None:
            inst.metadata = items
            self._notify("metadata")

        return 200, self._start_operation(
            request,
            project=project,
            operation_type="setMetadata",
            target_link=f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}/instances/{name}",
            effect=effect,
            zone=zone,
        )

    # -- auth ----------------------------------------------------------------------------------

    def _github_oidc(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        if request.authorization != f"Bearer {self.state.github_request_token}":
            # GitHub answers a bad runtime token with a bare 401 and a short message.
            return 401, {"message": "Bad credentials"}
        audience = (request.query.get("audience") or [""])[0]
        claims = {
            "iss": "https://token.actions.githubusercontent.com",
            "aud": audience,
            "sub": "repo:dojangkok/ai-server:environment:1-bigbang",
            "repository": "dojangkok/ai-server",
            "exp": int(time.time()) + 300,
        }
        jwt = ".".join(
            [
                _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()),
                _b64url(json.dumps(claims).encode()),
                _b64url(secrets.token_bytes(32)),
            ]
        )
        self.state.oidc_tokens.add(jwt)
        return 200, {"count": 1, "value": jwt}

    def _sts_token(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        form = request.form()
        if form.get("grant_type") != TOKEN_EXCHANGE_GRANT:
            raise ApiError(400, "unsupported_grant_type", "Unsupported grant type", oauth=True)
        if form.get("audience") != self.state.audience:
            raise ApiError(
                400,
                "invalid_target",
                'The target service indicated by the "audience" parameters is invalid. This '
                "might either be because the pool or provider is disabled or deleted or because "
                "it doesn't exist.",
                oauth=True,
            )
        if form.get("subject_token") not in self.state.oidc_tokens:
            raise ApiError(
                400,
                "invalid_grant",
                "The audience in ID Token does not match the expected audience.",
                oauth=True,
            )
        scopes = tuple((form.get("scope") or CLOUD_PLATFORM_SCOPE).split())
        token = "ya29.sts-" + secrets.token_urlsafe(16)
        self.state.tokens[token] = {"scopes": set(scopes), "who": "principal://github"}
        return 200, {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": 3599,
        }

    def _iam_generate_access_token(
        self, request: RecordedRequest, sa: str
    ) -> tuple[int, dict[str, Any]]:
        header = request.authorization or ""
        grant = self.state.tokens.get(header.removeprefix("Bearer "))
        if grant is None or not grant["scopes"] & {IAM_SCOPE, CLOUD_PLATFORM_SCOPE}:
            raise ApiError(401, "authError", "Request had invalid authentication credentials.")
        if sa != self.state.service_account:
            raise ApiError(
                403,
                "forbidden",
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
                "(or it may not exist).",
            )
        body = request.json() or {}
        scopes = tuple(body.get("scope") or ())
        token = "ya29.impersonated-" + secrets.token_urlsafe(16)
        self.state.tokens[token] = {"scopes": set(scopes), "who": sa}
        expire = datetime.now(timezone.utc) + timedelta(hours=1)
        return 200, {"accessToken": token, "expireTime": expire.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _oauth2_token(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        form = request.form()
        grant = form.get("grant_type")
        if grant == JWT_BEARER_GRANT:
            try:
                payload = form["assertion"].split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            except (KeyError, IndexError, ValueError) as exc:
                raise ApiError(400, "invalid_grant", "Invalid JWT.", oauth=True) from exc
            who = claims.get("iss", "")
            scopes = tuple(claims.get("scope", "").split())
        elif grant == "refresh_token":
            if form.get("refresh_token") not in self.state.refresh_tokens:
                raise ApiError(
                    400, "invalid_grant", "Token has been expired or revoked.", oauth=True
                )
            who = "user@example.com"
            scopes = tuple((form.get("scope") or CLOUD_PLATFORM_SCOPE).split())
        else:
            raise ApiError(400, "unsupported_grant_type", "Invalid grant_type", oauth=True)
        token = "ya29.oauth-" + secrets.token_urlsafe(16)
        self.state.tokens[token] = {"scopes": set(scopes), "who": who}
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    # -- OS Login ------------------------------------------------------------------------------

    def _oslogin_profile_body(self, user: str) -> dict[str, Any]:
        local = re.sub(r"[^a-z0-9]", "_", user.split("@")[0].lower())
        username = f"sa_{local}" if user.endswith(".gserviceaccount.com") else local
        keys = self.state.oslogin_keys.get(user, {})
        return {
            "name": user,
            "posixAccounts": [
                {
                    "primary": True,
                    "username": username,
                    "uid": "2000",
                    "gid": "2000",
                    "homeDirectory": f"/home/{username}",
                    "operatingSystemType": "LINUX",
                    "accountId": self.state.project,
                    "name": f"users/{user}/projects/{self.state.project}",
                }
            ],
            "sshPublicKeys": {fp: dict(record) for fp, record in keys.items()},
        }

    def _oslogin_import(self, request: RecordedRequest, user: str) -> tuple[int, dict[str, Any]]:
        body = request.json() or {}
        key = body.get("key", "")
        parts = key.split()
        if len(parts) < 2:
            raise ApiError(400, "invalid", "Invalid SSH key.")
        fingerprint = hashlib.sha256(base64.b64decode(parts[1])).hexdigest()
        record = {
            "key": key,
            "fingerprint": fingerprint,
            "name": f"users/{user}/sshPublicKeys/{fingerprint}",
        }
        if body.get("expirationTimeUsec"):
            record["expirationTimeUsec"] = str(body["expirationTimeUsec"])
        self.state.oslogin_keys.setdefault(user, {})[fingerprint] = record
        self._notify("oslogin")
        return 200, {"loginProfile": self._oslogin_profile_body(user)}

    def _oslogin_delete(
        self, request: RecordedRequest, user: str, fp: str
    ) -> tuple[int, dict[str, Any]]:
        keys = self.state.oslogin_keys.get(user, {})
        if fp not in keys:
            raise ApiError(404, "notFound", f"Requested entity was not found: {fp}")
        del keys[fp]
        self._notify("oslogin")
        return 200, {}

    def _oslogin_profile(self, request: RecordedRequest, user: str) -> tuple[int, dict[str, Any]]:
        return 200, self._oslogin_profile_body(user)


def _self_signed_jwt_grant(token: str) -> dict[str, Any] | None:
    """Service-account credentials in Google's client libraries send a self-signed JWT
    instead of an access token; accept one issued by a service account (signature unchecked)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    issuer = claims.get("iss", "") if isinstance(claims, dict) else ""
    if not issuer.endswith(".gserviceaccount.com") or claims.get("exp", 0) < time.time():
        return None
    scopes = set(str(claims.get("scope", "")).split()) or {CLOUD_PLATFORM_SCOPE}
    return {"scopes": scopes, "who": issuer, "self_signed": True}


def self_signed_jwt_claims(authorization: str | None) -> dict[str, Any]:
    """The claims of a `Bearer <self-signed JWT>` header (for assertions in tests)."""
    token = (authorization or "").removeprefix("Bearer ")
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _filter_matches(expression: str, resource: dict[str, Any]) -> bool:
    """Compute's list filter for one `FIELD eq|ne "REGEX"` term (RE2 full match)."""
    match = re.fullmatch(r"\s*(\w+)\s+(eq|ne)\s+(?:\"(.*)\"|'(.*)'|(\S+))\s*", expression)
    if not match:
        raise ApiError(400, "invalid", f"Invalid value for field 'filter': '{expression}'.")
    field_name, op, *values = match.groups()
    pattern = next(v for v in values if v is not None)
    hit = re.fullmatch(pattern, str(resource.get(field_name, ""))) is not None
    return hit if op == "eq" else not hit


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
