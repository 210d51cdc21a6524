"""The engine benchmark's clients: POST /v1/completions at a steady rate (bench's load: the same
schedule, records and client timeout) and long SSE token streams from /stream, each of which
knows whether it was cut (no ``data: [DONE]``) and which releases sent its tokens."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from testkit.guard import check_address
from testkit.load import LoadGenerator, RequestRecord, http_request

MODEL = "demo-model"  # what the example app's engine serves by default
COMPLETION = json.dumps({"model": MODEL, "prompt": "bench", "max_tokens": 4}).encode()
TOKEN_INTERVAL_S = 0.2


class CompletionsLoad(LoadGenerator):
    """RATE POST /v1/completions per second (one completion of 4 tokens each), a fresh
    connection and at most TIMEOUT seconds each."""

    def __init__(self, address: str, *, rate: float, timeout: float, max_duration: float) -> None:
        super().__init__(
            address,
            path="/v1/completions",
            rate=rate,
            timeout=timeout,
            max_duration=max_duration,
        )

    def _one(self, seq: int, scheduled: float) -> None:
        start = self.now()
        answer = http_request(
            self.address, self.port, self.path, self.timeout, method="POST", json_body=COMPLETION
        )
        end = self.now()
        self.records.append(
            RequestRecord(
                seq, scheduled, start, end, answer.status, answer.code, None, answer.error[:120]
            )
        )


@dataclass
class StreamResult:
    """One stream: tokens received of those asked for, whether [DONE] came, the releases that
    sent tokens, and the error that ended it early ("" when none)."""

    asked: int
    tokens: int = 0
    done: bool = False
    in_order: bool = True
    releases: set[str] = field(default_factory=set)
    error: str = ""

    @property
    def intact(self) -> bool:
        return self.done and self.in_order and self.tokens == self.asked

    def as_dict(self) -> dict[str, object]:
        return {
            "asked": self.asked,
            "tokens": self.tokens,
            "done": self.done,
            "intact": self.intact,
            "releases": sorted(self.releases),
            "error": self.error,
        }


class TokenStream:
    """GET /stream for SECONDS (tokens TOKEN_INTERVAL_S apart) in a thread of its own; a read
    that waits longer than TIMEOUT seconds ends it as cut."""

    def __init__(self, address: str, *, seconds: float, timeout: float, port: int = 8000) -> None:
        self.address = check_address(address)
        self.port, self.timeout = port, timeout
        self.result = StreamResult(asked=max(1, round(seconds / TOKEN_INTERVAL_S)))
        self.first = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name="stream")

    def start(self) -> TokenStream:
        self._thread.start()
        return self

    def join(self, timeout: float) -> StreamResult:
        """The result once the stream ended (or TIMEOUT seconds passed: then cut, as far as
        this run can tell)."""
        self._thread.join(timeout)
        if self._thread.is_alive() and not self.result.error:
            self.result.error = f"still open {timeout:.0f} s after it was waited for"
        return self.result

    def _read(self) -> None:
        r = self.result
        path = f"/stream?tokens={r.asked}&interval={TOKEN_INTERVAL_S}"
        conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            if reply.status != 200:
                r.error = f"HTTP {reply.status}"
                return
            while line := reply.readline():
                self._event(line.decode("utf-8", "replace").strip())
                if r.done:
                    return
            r.error = r.error or "the connection ended before [DONE]"
        except (OSError, http.client.HTTPException) as exc:
            r.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
            self.first.set()

    def _event(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            self.result.done = True
            return
        token = json.loads(data)
        self.result.in_order &= token.get("index") == self.result.tokens
        self.result.tokens += 1
        self.result.releases.add(str(token.get("release")))
        self.first.set()


def open_streams(
    address: str, count: int, *, seconds: float, timeout: float, gap_s: float = 0.5
) -> list[TokenStream]:
    """COUNT streams opened GAP_S apart, each waited for until its first token came (or it
    failed), so they are all open when this returns."""
    streams = []
    for _ in range(count):
        stream = TokenStream(address, seconds=seconds, timeout=timeout).start()
        stream.first.wait(timeout + 5)
        streams.append(stream)
        time.sleep(gap_s)
    return streams
