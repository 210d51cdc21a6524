"""Traffic through the sandbox's load balancer (testkit.lb), as users send it while a fleet
rolls out: a steady rate of POST /v1/completions with a client timeout (testkit.load's
schedule and records), long token streams (GET /stream) started when asked, and a sampler of
the hosts in service, all on one clock (seconds since the load's start).

What it tells: the requests that failed, the streams cut (no `[DONE]` at the end), the
latencies, and the fewest hosts in service at any sample.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from testkit.guard import check_address
from testkit.lb import LoadBalancer, Sample, UpSampler, fewest_up
from testkit.load import LoadGenerator, RequestRecord

COMPLETION = json.dumps({"prompt": "hello", "max_tokens": 4}).encode()


@dataclass
class StreamRecord:
    """One GET /stream: times on the traffic's clock, the tokens read and the releases that
    sent them; `done` only when the closing `[DONE]` came."""

    started: float
    ended: float = 0.0
    tokens: int = 0
    done: bool = False
    code: int = 0
    error: str = ""
    releases: set[str] = field(default_factory=set)

    @property
    def cut(self) -> bool:
        return not self.done


def read_stream(
    address: str, port: int, tokens: int, interval: float, record: StreamRecord, clock: float
) -> None:
    """GET /stream?tokens=TOKENS&interval=INTERVAL at ADDRESS:PORT, filling RECORD as events
    come (CLOCK: time.monotonic of the traffic's zero); never raises."""
    conn = http.client.HTTPConnection(check_address(address), port, timeout=interval + 30)
    try:
        conn.request("GET", f"/stream?tokens={tokens}&interval={interval:g}")
        reply = conn.getresponse()
        record.code = reply.status
        if reply.status != 200:
            record.error = f"http-{reply.status}: {reply.read()[:120]!r}"
            return
        while line := reply.readline():
            data = line.decode(errors="replace").strip().removeprefix("data: ")
            if data == "[DONE]":
                record.done = True
            elif data.startswith("{"):
                record.tokens += 1
                record.releases.add(str(json.loads(data).get("release")))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        record.ended = time.monotonic() - clock
        conn.close()


@dataclass(frozen=True)
class TrafficResult:
    """What went through the load balancer."""

    records: list[RequestRecord]
    streams: list[StreamRecord]
    samples: list[Sample]

    @property
    def failed(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.ok]

    @property
    def cut(self) -> list[StreamRecord]:
        return [s for s in self.streams if s.cut]

    def fewest_up(self, start: float = 0.0, end: float = float("inf")) -> int:
        """The fewest hosts in service at a sample from START to END (traffic clock)."""
        return fewest_up(self.samples, start, end)

    def describe(self) -> str:
        """One line for people: requests failed by kind, streams cut, fewest hosts up."""
        kinds: dict[str, int] = {}
        for r in self.failed:
            kinds[r.status] = kinds.get(r.status, 0) + 1
        by_kind = f" {kinds}" if kinds else ""
        return (
            f"{len(self.failed)}/{len(self.records)} requests failed{by_kind}, "
            f"{len(self.cut)}/{len(self.streams)} streams cut, "
            f"fewest hosts in service {self.fewest_up()}"
        )


class LbTraffic:
    """RATE POST /v1/completions per second through LB (each with TIMEOUT seconds), for at
    most MAX_DURATION seconds; streams and the sampler on the same clock."""

    def __init__(
        self,
        lb: LoadBalancer,
        *,
        rate: float,
        timeout: float,
        max_duration: float,
        sample_every_s: float = 0.25,
    ) -> None:
        self.lb = lb
        self.load = LoadGenerator(
            lb.address,
            port=lb.port,
            path="/v1/completions",
            rate=rate,
            timeout=timeout,
            max_duration=max_duration,
            body=COMPLETION,
        )
        self.sample_every_s = sample_every_s
        self.sampler: UpSampler | None = None
        self.streams: list[StreamRecord] = []
        self._threads: list[threading.Thread] = []

    def now(self) -> float:
        return self.load.now()

    def start(self) -> LbTraffic:
        self.load.start()
        self.sampler = UpSampler(self.lb, self.sample_every_s, t0=self.load.t0).__enter__()
        return self

    def open_streams(self, count: int, tokens: int, interval: float) -> list[StreamRecord]:
        """COUNT streams of TOKENS events INTERVAL seconds apart, each in its own thread."""
        opened = []
        for _ in range(count):
            record = StreamRecord(self.now())
            args = (self.lb.address, self.lb.port, tokens, interval, record, self.load.t0)
            thread = threading.Thread(target=read_stream, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)
            opened.append(record)
        self.streams.extend(opened)
        return opened

    def wait_streams(self, timeout: float) -> None:
        """Wait, at most TIMEOUT seconds in all, for every stream to end."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self, stream_timeout: float = 120.0) -> TrafficResult:
        """Stop the load (its requests in flight end within their timeout), wait for the
        streams, stop the sampler; everything that was seen."""
        records = self.load.stop()
        self.wait_streams(stream_timeout)
        samples: list[Sample] = []
        if self.sampler is not None:
            self.sampler.__exit__(None, None, None)
            samples = list(self.sampler.samples)
        return TrafficResult(records, list(self.streams), samples)
