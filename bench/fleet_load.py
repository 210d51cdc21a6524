"""The fleet benchmark's load: bench's steady load (testkit.load) with each request sent to the
next host of the target, round-robin, and what a host's /predict says it serves."""

from __future__ import annotations

import json
from collections.abc import Sequence

from testkit.guard import check_address
from testkit.load import OK, LoadGenerator, RequestRecord, http_get


def host_for(seq: int, count: int) -> int:
    """The index of the host request SEQ goes to: round-robin over COUNT hosts."""
    if count < 1:
        raise ValueError("round-robin over no hosts")
    return seq % count


def variant_of(body: bytes) -> str | None:
    """The variant (else the release) a /predict answer names."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = (data.get("variant") or data.get("release")) if isinstance(data, dict) else None
    return None if value is None else str(value)


def failed_by_host(
    records: Sequence[RequestRecord], names: Sequence[str], since: float
) -> dict[str, int]:
    """Host name -> its failed requests among those scheduled from SINCE on (NAMES in the
    order the load went round them)."""
    failed = dict.fromkeys(names, 0)
    for r in records:
        if r.scheduled >= since and not r.ok:
            failed[names[host_for(r.seq, len(names))]] += 1
    return failed


class RoundRobinLoad(LoadGenerator):
    """bench's steady load (same schedule, timeout and records), request SEQ sent to
    ADDRESSES[host_for(SEQ)]: the records' host is known from their seq."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        rate: float,
        timeout: float,
        max_duration: float,
        port: int = 8000,
    ) -> None:
        if not addresses:
            raise ValueError("a load needs at least one address")
        super().__init__(
            addresses[0], port=port, rate=rate, timeout=timeout, max_duration=max_duration
        )
        self.addresses = [check_address(a) for a in addresses]

    def _one(self, seq: int, scheduled: float) -> None:
        address = self.addresses[host_for(seq, len(self.addresses))]
        start = self.now()
        answer = http_get(address, self.port, f"{self.path}?q=bench-{seq}", self.timeout)
        end = self.now()
        variant = variant_of(answer.body) if answer.status == OK else None
        self.records.append(
            RequestRecord(
                seq, scheduled, start, end, answer.status, answer.code, variant, answer.error[:120]
            )
        )
