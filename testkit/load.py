"""A steady load on GET /predict: requests are scheduled at a fixed rate from a start time and
each runs in a worker thread with a client timeout, so a slow answer never delays the schedule.
The generator stops itself after `max_duration` seconds even if nobody calls `stop()`.

Each request opens a fresh connection (`Connection: close`): a refused connect is then seen as
refused, not as a reset of a kept-alive connection to the process that was stopped.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from testkit.guard import check_address

OK = "ok"
REFUSED = "refused"
TIMEOUT = "timeout"
RESET = "reset"
ERROR = "error"


@dataclass(frozen=True)
class RequestRecord:
    """One request; times are seconds since the generator's start (time.monotonic based)."""

    seq: int
    scheduled: float
    start: float
    end: float
    status: str  # ok | refused | timeout | reset | error | http-<code>
    code: int = 0  # the HTTP status when an answer came, else 0
    variant: str | None = None  # the release variant that answered /predict
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def latency(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Answer:
    status: str
    code: int
    body: bytes
    error: str = ""


def http_get(address: str, port: int, path: str, timeout: float) -> Answer:
    """GET http://ADDRESS:PORT/PATH on a fresh connection, the whole exchange within TIMEOUT
    seconds; never raises for network errors (the status says what happened)."""
    return http_request(address, port, path, timeout)


def http_request(
    address: str,
    port: int,
    path: str,
    timeout: float,
    *,
    method: str = "GET",
    json_body: bytes = b"",
) -> Answer:
    """As http_get, with METHOD and, when given, JSON_BODY sent as application/json."""
    check_address(address)
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
        headers = {"Connection": "close"}
        if json_body:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=json_body or None, headers=headers)
        conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
        response = conn.getresponse()
        body = response.read()
        code = response.status
        return Answer(OK if code == 200 else f"http-{code}", code, body)
    except ConnectionRefusedError as exc:
        return Answer(REFUSED, 0, b"", str(exc))
    except TimeoutError as exc:
        return Answer(TIMEOUT, 0, b"", str(exc) or "timed out")
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
        return Answer(RESET, 0, b"", f"{type(exc).__name__}: {exc}")
    except (OSError, http.client.HTTPException) as exc:
        return Answer(ERROR, 0, b"", f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _variant(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("variant") or data.get("release")
    return str(value) if value is not None else None


class LoadGenerator:
    """RATE requests per second to http://ADDRESS:PORT/PATH from `start()` until `stop()` or
    MAX_DURATION seconds, whichever comes first; POSTs of BODY when it is given."""

    def __init__(
        self,
        address: str,
        *,
        port: int = 8000,
        path: str = "/predict",
        rate: float = 20.0,
        timeout: float = 2.0,
        max_duration: float = 300.0,
        body: bytes | None = None,
    ) -> None:
        if rate <= 0 or timeout <= 0 or max_duration <= 0:
            raise ValueError("rate, timeout and max_duration must be positive")
        self.address = check_address(address)
        self.port = port
        self.path = path
        self.rate = rate
        self.timeout = timeout
        self.max_duration = max_duration
        self.body = body
        self.records: list[RequestRecord] = []
        self.t0 = 0.0
        self._stop = threading.Event()
        workers = min(512, math.ceil(rate * (timeout + 1)) + 8)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load")
        self._scheduler = threading.Thread(target=self._schedule, daemon=True, name="load-sched")

    def now(self) -> float:
        """Seconds since the start, on the clock the records use."""
        return time.monotonic() - self.t0

    def start(self) -> LoadGenerator:
        self.t0 = time.monotonic()
        self._scheduler.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait, at most TIMEOUT seconds (None: no limit), for the schedule to run out by itself
        (MAX_DURATION after the start); True when it has. The requests still in flight are
        not waited for: stop() does that."""
        self._scheduler.join(timeout)
        return not self._scheduler.is_alive()

    def stop(self) -> list[RequestRecord]:
        """Stop scheduling, wait for the requests in flight (each ends within its timeout)
        and return every record, ordered by scheduled time."""
        self._stop.set()
        self._scheduler.join()
        self._pool.shutdown(wait=True)
        return sorted(self.records, key=lambda r: r.seq)

    def _schedule(self) -> None:
        seq = 0
        while True:
            due = seq / self.rate
            if due >= self.max_duration:
                return
            wait = self.t0 + due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            if self._stop.is_set():
                return
            self._pool.submit(self._one, seq, due)
            seq += 1

    def _one(self, seq: int, scheduled: float) -> None:
        start = self.now()
        path = f"{self.path}?q=bench-{seq}"
        answer = http_request(
            self.address,
            self.port,
            path,
            self.timeout,
            method="GET" if self.body is None else "POST",
            json_body=self.body or b"",
        )
        end = self.now()
        variant = _variant(answer.body) if answer.status == OK else None
        self.records.append(
            RequestRecord(
                seq, scheduled, start, end, answer.status, answer.code, variant, answer.error[:120]
            )
        )
