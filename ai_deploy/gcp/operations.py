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
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TypeVar

from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1

from ai_deploy.gcp import GcpError

logger = logging.getLogger(__name__)

ENDPOINT_ENV_VAR = "AI_DEPLOY_COMPUTE_ENDPOINT"
DEFAULT_OPERATION_TIMEOUT = 300.0
# One call's HTTP timeout; operations.wait itself returns after at most ~2 minutes.
CALL_TIMEOUT = 60.0
_TRANSIENT = (
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
    api_exceptions.TooManyRequests,
)
_T = TypeVar("_T")


class OperationError(GcpError):
    """A Compute operation ended DONE with an error, or did not end in time."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        http_status: int | None = None,
        codes: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.http_status = http_status
        self.codes = tuple(codes)


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


def retry_transient(what: str, call: Callable[[], _T], attempts: int = 3) -> _T:
    """Run CALL, retrying 5xx/429 answers with a short backoff (mutations have no retry of
    their own in the client library)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except _TRANSIENT as exc:
            if attempt == attempts:
                raise
            delay = 0.5 * 2 ** (attempt - 1)
            logger.warning("%s: %s; retrying in %.1fs", what, exc.message, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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
        )
    return op


def _wait(
    poll: Callable[[], compute_v1.Operation],
    op: compute_v1.Operation,
    what: str,
    timeout: float,
) -> compute_v1.Operation:
    deadline = time.monotonic() + timeout
    while op.status != compute_v1.Operation.Status.DONE:
        if time.monotonic() >= deadline:
            raise OperationError(
                f"{what}: operation {op.name} still {op.status.name} after {timeout:.0f}s",
                operation=op.name,
            )
        op = poll()
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
        return retry_transient(
            what,
            lambda: client.wait(project=project, operation=operation.name, timeout=CALL_TIMEOUT),
        )

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
        return retry_transient(
            what,
            lambda: client.wait(
                project=project, zone=zone, operation=operation.name, timeout=CALL_TIMEOUT
            ),
        )

    return _wait(poll, operation, what, timeout)


__all__ = [
    "CALL_TIMEOUT",
    "DEFAULT_OPERATION_TIMEOUT",
    "ENDPOINT_ENV_VAR",
    "OperationError",
    "compute_client",
    "compute_client_options",
    "parse_timestamp",
    "retry_transient",
    "wait_global_operation",
    "wait_zone_operation",
]
