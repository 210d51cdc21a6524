"""The Compute REST plumbing every call in compute.py shares: clients built with one set of
client options, retries of transient answers, and waiting for operations.

Operations are polled with this module's own GlobalOperationsClient / ZoneOperationsClient
built with the same client options as the call that started them: the library's
`insert(...).result()` polls through a client of its own that ignores the endpoint setting.
A DONE operation that carries an error becomes an `OperationError`.

The endpoint is the real one unless AI_DEPLOY_COMPUTE_ENDPOINT is set (tests point it at a
loopback server; an explicit http:// scheme is kept).
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TypeVar

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1

from ai_deploy.gcp import GcpError

logger = logging.getLogger(__name__)

ENDPOINT_ENV_VAR = "AI_DEPLOY_COMPUTE_ENDPOINT"
DEFAULT_OPERATION_TIMEOUT = 300.0
# One call's HTTP timeout: longer than operations.wait's own (it blocks up to ~2 minutes), so a
# slow operation ends as "still RUNNING", never as a client-side ReadTimeout.
CALL_TIMEOUT = 150.0
# Retries: exponential backoff with full jitter, RETRY_BASE_S * 2**n capped at RETRY_CAP_S,
# at most RETRY_ATTEMPTS calls. Polls of an operation that is not DONE start at POLL_BASE_S
# apart and back off to POLL_CAP_S (a `wait` that returns at once is never a tight loop).
RETRY_ATTEMPTS = 6
RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0
POLL_BASE_S = 0.5
POLL_CAP_S = 8.0
# Reasons Compute documents as "wait and try again" inside 403 and 400 answers.
RETRYABLE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "resourceNotReady"})
_TRANSIENT = (
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
    api_exceptions.TooManyRequests,
    api_exceptions.ServerError,
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
)
_T = TypeVar("_T")


class OperationError(GcpError):
    """A Compute operation ended DONE with an error (`finished` is True: the change was not
    made), or its outcome is unknown: not DONE in time, or it could not be read."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        http_status: int | None = None,
        codes: Sequence[str] = (),
        finished: bool = False,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.http_status = http_status
        self.codes = tuple(codes)
        self.finished = finished


class OperationUnreadable(OperationError):
    """The operation was started (the change may happen) but reading it failed, for example
    403 without compute.globalOperations.get / compute.zoneOperations.get."""

    def __init__(self, message: str, *, operation: str, cause: BaseException) -> None:
        super().__init__(message, operation=operation)
        self.cause = cause


def compute_client_options(environ: Mapping[str, str] | None = None) -> ClientOptions:
    """Client options for every Compute client: the real endpoint, or AI_DEPLOY_COMPUTE_ENDPOINT
    when set (for example http://127.0.0.1:PORT)."""
    env = os.environ if environ is None else environ
    endpoint = env.get(ENDPOINT_ENV_VAR, "").strip().rstrip("/")
    return ClientOptions(api_endpoint=endpoint) if endpoint else ClientOptions()


def compute_client(cls: type[_T], credentials: Credentials) -> _T:
    return cls(  # type: ignore[call-arg]
        credentials=credentials, transport="rest", client_options=compute_client_options()
    )


def new_request_id() -> str:
    """A requestId for one mutation: reused by every retry of it, so a retried insert that
    was in fact accepted returns the same operation instead of a 409."""
    return str(uuid.uuid4())


def reasons(exc: BaseException) -> set[str]:
    """The `errors[].reason` values of a Google API error (empty for anything else)."""
    errors = getattr(exc, "errors", None) or []
    return {str(e.get("reason")) for e in errors if isinstance(e, dict)}


def is_retryable(exc: BaseException) -> bool:
    """Whether Compute documents EXC as transient: 429, 5xx, a client timeout or dropped
    connection, or a 403/400 whose reason is rateLimitExceeded, userRateLimitExceeded or
    resourceNotReady."""
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, api_exceptions.ClientError) and bool(reasons(exc) & RETRYABLE_REASONS)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in [base/2, min(cap, base * 2**(attempt-1))]."""
    top = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(min(base / 2, top), top)


def retry_transient(what: str, call: Callable[[], _T], attempts: int | None = None) -> _T:
    """Run CALL, retrying what `is_retryable` accepts with exponential backoff and jitter.

    Mutations must carry a requestId fixed before the first try, so the retries are the
    same request to Compute. The last error propagates unchanged."""
    attempts = attempts or RETRY_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            delay = backoff_delay(attempt, RETRY_BASE_S, RETRY_CAP_S)
            logger.warning("%s: %s; retrying in %.1fs", what, _describe(exc), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        why = ", ".join(sorted(reasons(exc)))
        return f"{exc.code} {why}".strip() + f": {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def parse_timestamp(value: str) -> datetime | None:
    """Compute's RFC 3339 timestamps (`2024-05-01T12:34:56.789-07:00`, or with `Z`) as aware
    datetimes; None for an empty or unparsable value."""
    if not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat takes only 3 or 6 fractional digits.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, tail = rest[:digits], rest[digits:]
        text = f"{head}.{(frac + '000000')[:6]}{tail}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _check_operation(op: compute_v1.Operation, what: str) -> compute_v1.Operation:
    errors = list(op.error.errors) if "error" in op else []
    if errors or op.http_error_status_code >= 400:
        details = "; ".join(f"{e.code}: {e.message}" for e in errors) or op.http_error_message
        raise OperationError(
            f"{what} failed: {details}",
            operation=op.name,
            http_status=op.http_error_status_code or None,
            codes=[e.code for e in errors],
            finished=True,
        )
    return op


def _wait(
    poll: Callable[[], compute_v1.Operation],
    op: compute_v1.Operation,
    what: str,
    timeout: float,
) -> compute_v1.Operation:
    deadline = time.monotonic() + timeout
    polls = 0
    while op.status != compute_v1.Operation.Status.DONE:
        now = time.monotonic()
        if now >= deadline:
            raise OperationError(
                f"{what}: operation {op.name} still {op.status.name} after {timeout:.0f}s",
                operation=op.name,
            )
        if polls:
            # operations.wait may return at once: keep polls apart, backing off.
            time.sleep(min(backoff_delay(polls, POLL_BASE_S, POLL_CAP_S), deadline - now))
        polls += 1
        try:
            op = retry_transient(what, poll)
        except Exception as exc:
            raise OperationUnreadable(
                f"{what}: operation {op.name} was started but could not be read ({_describe(exc)})",
                operation=op.name,
                cause=exc,
            ) from exc
    return _check_operation(op, what)


def wait_global_operation(
    credentials: Credentials,
    project: str,
    operation: compute_v1.Operation,
    *,
    what: str = "operation",
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
) -> compute_v1.Operation:
    """Block until the global OPERATION is DONE (own operations client, same endpoint).

    Raises OperationError when it ends with an error or is not DONE within TIMEOUT seconds.
    """
    client = compute_client(compute_v1.GlobalOperationsClient, credentials)

    def poll() -> compute_v1.Operation:
        return client.wait(project=project, operation=operation.name, timeout=CALL_TIMEOUT)

    return _wait(poll, operation, what, timeout)


def wait_zone_operation(
    credentials: Credentials,
    project: str,
    zone: str,
    operation: compute_v1.Operation,
    *,
    what: str = "operation",
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
) -> compute_v1.Operation:
    """Block until the zonal OPERATION is DONE (own operations client, same endpoint).

    Raises OperationError when it ends with an error or is not DONE within TIMEOUT seconds.
    """
    client = compute_client(compute_v1.ZoneOperationsClient, credentials)

    def poll() -> compute_v1.Operation:
        return client.wait(
            project=project, zone=zone, operation=operation.name, timeout=CALL_TIMEOUT
        )

    return _wait(poll, operation, what, timeout)


__all__ = [
    "CALL_TIMEOUT",
    "DEFAULT_OPERATION_TIMEOUT",
    "ENDPOINT_ENV_VAR",
    "OperationError",
    "OperationUnreadable",
    "backoff_delay",
    "compute_client",
    "compute_client_options",
    "is_retryable",
    "new_request_id",
    "parse_timestamp",
    "reasons",
    "retry_transient",
    "wait_global_operation",
    "wait_zone_operation",
]
