"""What the model-files benchmark reports, pure: the fetcher's `DONE` line and curl's
`-w '%{time_total} %{size_download}'` answer read back, throughput in MB/s (10^6 bytes), the
medians of the deploys with and without models, the tables and the acceptance line."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

PRESENT_LIMIT_S = 0.5  # acceptance: a deploy with every model file present costs at most this
MB = 1_000_000  # more than one without models (median against median)

_DONE = re.compile(r"models: DONE ([0-9a-f]{64}) (\S+) (\d+) ([0-9.]+)\s*$")
_PRESENT = re.compile(r"models: PRESENT ([0-9a-f]{64}) ")


@dataclass(frozen=True)
class Done:
    """The fetcher's `DONE sha path bytes seconds`, as the deploy printed it."""

    sha256: str
    path: str
    bytes: int
    seconds: float


def parse_done(output: str) -> list[Done]:
    """Every `models: DONE ...` line of a deploy's OUTPUT, in order."""
    found = []
    for line in output.splitlines():
        match = _DONE.search(line)
        if match:
            sha, path, size, seconds = match.groups()
            found.append(Done(sha, path, int(size), float(seconds)))
    return found


def present_count(output: str) -> int:
    """How many `models: PRESENT` lines a deploy's OUTPUT has."""
    return sum(1 for line in output.splitlines() if _PRESENT.search(line))


def parse_curl(text: str) -> tuple[float, int]:
    """(seconds, bytes) from curl's `-w '%{time_total} %{size_download}'` TEXT."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"curl said {text!r}, not 'SECONDS BYTES'")
    seconds, size = float(parts[0]), int(float(parts[1]))
    if seconds <= 0 or size <= 0:
        raise ValueError(f"curl said {text!r}: no time or no bytes")
    return seconds, size


def mb_per_s(size: int, seconds: float) -> float:
    return size / MB / seconds


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Throughput:
    """The file's size, curl's tries (seconds each), the fetch's DONE line and the wall time of
    the deploy that fetched it; for context, HASH_S: its sha256 alone (python3's hashlib, as
    the fetcher computes it), DISK_S: a copy of it written to the store's disk with fsync."""

    size: int
    curl_s: list[float] = field(default_factory=list)
    hash_s: float | None = None
    disk_s: float | None = None
    fetch: Done | None = None
    deploy_wall_s: float | None = None
    deploy_rc: int | None = None

    @property
    def curl_best_s(self) -> float | None:
        return min(self.curl_s) if self.curl_s else None

    @property
    def curl_mb_s(self) -> float | None:
        best = self.curl_best_s
        return mb_per_s(self.size, best) if best else None

    @property
    def fetch_mb_s(self) -> float | None:
        return mb_per_s(self.fetch.bytes, self.fetch.seconds) if self.fetch else None

    @property
    def ratio(self) -> float | None:
        """fetch MB/s / curl MB/s."""
        curl, fetch = self.curl_mb_s, self.fetch_mb_s
        return fetch / curl if curl and fetch else None

    def as_dict(self) -> dict[str, object]:
        return {
            "size_bytes": self.size,
            "curl_s": self.curl_s,
            "curl_best_s": self.curl_best_s,
            "curl_mb_s": self.curl_mb_s,
            "hash_s": self.hash_s,
            "disk_write_s": self.disk_s,
            "fetch": asdict(self.fetch) if self.fetch else None,
            "fetch_mb_s": self.fetch_mb_s,
            "fetch_over_curl": self.ratio,
            "deploy_wall_s": self.deploy_wall_s,
            "deploy_exit_code": self.deploy_rc,
        }


@dataclass
class Deploy:
    """One measured deploy of a fresh release: KIND "present" (models.toml, files already in
    the store) or "none" (no models.toml)."""

    kind: str
    label: str
    release_id: str
    rc: int
    wall_s: float
    serves: str  # the variant /predict answered with afterwards
    present_lines: int  # `models: PRESENT` lines in its output
    done_lines: int  # `models: DONE` lines (a download): 0 expected
    requests: int | None = None  # requests the model server got for the file during it

    @property
    def ok(self) -> bool:
        expected_present = 1 if self.kind == "present" else 0
        return (
            self.rc == 0
            and self.serves == self.label
            and self.present_lines == expected_present
            and self.done_lines == 0
            and self.requests in (0, None)
        )


def walls(deploys: Sequence[Deploy], kind: str) -> list[float]:
    return [d.wall_s for d in deploys if d.kind == kind and d.ok]


def pair_differences(deploys: Sequence[Deploy]) -> list[float]:
    """present - none of each pair run back to back (in order; a pair with a bad run left
    out)."""
    present = [d for d in deploys if d.kind == "present"]
    none = [d for d in deploys if d.kind == "none"]
    pairs = zip(present, none, strict=False)  # an interrupted run may end inside a pair
    return [p.wall_s - n.wall_s for p, n in pairs if p.ok and n.ok]


@dataclass(frozen=True)
class Acceptance:
    holds: bool | None  # None: not measured
    text: str


def acceptance(deploys: Sequence[Deploy], limit: float = PRESENT_LIMIT_S) -> Acceptance:
    present, none = median(walls(deploys, "present")), median(walls(deploys, "none"))
    if present is None or none is None:
        return Acceptance(None, "acceptance not decided: a kind of deploy has no good run")
    diff = present - none
    holds = diff <= limit
    verdict = "holds" if holds else "does not hold"
    return Acceptance(
        holds,
        f"acceptance (a deploy whose model files are present within {limit:g} s of a deploy "
        f"without models, median against median) {verdict}: {present:.2f} s against "
        f"{none:.2f} s, difference {diff:+.2f} s",
    )


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def throughput_table(t: Throughput) -> str:
    mib = t.size / 2**20
    tries = ", ".join(f"{s:.2f}" for s in t.curl_s) or "-"
    fetch_s = t.fetch.seconds if t.fetch else None
    hash_mb_s = mb_per_s(t.size, t.hash_s) if t.hash_s else None
    disk_mb_s = mb_per_s(t.size, t.disk_s) if t.disk_s else None
    rows = [
        "| Measure | Seconds | MB/s | x curl |",
        "|---|---|---|---|",
        f"| curl to /dev/null, better of 2 ({tries} s) | {_num(t.curl_best_s)} | "
        f"{_num(t.curl_mb_s, '.0f')} | {'1.00x' if t.curl_s else '-'} |",
        f"| fetcher: download + sha256 + write + fsync (its DONE line) | {_num(fetch_s)} | "
        f"{_num(t.fetch_mb_s, '.0f')} | {_num(t.ratio)}{'x' if t.ratio else ''} |",
        f"| sha256 alone, python3 hashlib as in the fetcher (context) | {_num(t.hash_s)} | "
        f"{_num(hash_mb_s, '.0f')} | - |",
        f"| copy to the store's disk + fsync alone, dd (context) | {_num(t.disk_s)} | "
        f"{_num(disk_mb_s, '.0f')} | - |",
        f"| the deploy that fetched it, end to end (exit {t.deploy_rc}) | "
        f"{_num(t.deploy_wall_s, '.1f')} | - | - |",
    ]
    return f"File: {t.size} bytes ({mib:.0f} MiB)\n\n" + "\n".join(rows)


def deploys_table(deploys: Sequence[Deploy]) -> str:
    rows = [
        "| Deploy (a fresh release each) | Runs (good) | Wall s each | Median wall s |",
        "|---|---|---|---|",
    ]
    titles = {"present": "models.toml, its files present (PRESENT)", "none": "no models.toml"}
    for kind, title in titles.items():
        mine = [d for d in deploys if d.kind == kind]
        each = ", ".join(f"{d.wall_s:.2f}" + ("" if d.ok else " (bad)") for d in mine) or "-"
        rows.append(
            f"| {title} | {len(mine)} ({sum(d.ok for d in mine)}) | {each} | "
            f"{_num(median(walls(deploys, kind)))} |"
        )
    present, none = median(walls(deploys, "present")), median(walls(deploys, "none"))
    diff = present - none if present is not None and none is not None else None
    pairs = ", ".join(f"{x:+.2f}" for x in pair_differences(deploys)) or "-"
    rows.append(f"| difference (present - none) | | each pair: {pairs} | {_num(diff, '+.2f')} |")
    return "\n".join(rows)


def render_markdown(
    info: Sequence[tuple[str, str]], t: Throughput, deploys: Sequence[Deploy], notes: list[str]
) -> str:
    lines = ["# Model files: fetch throughput and the cost of present models", ""]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info), ""]
    lines += ["## Throughput (server and fetcher on the host's loopback)", ""]
    lines += [throughput_table(t), ""]
    lines += ["## Deploys that fetch nothing, alternated", "", deploys_table(deploys), ""]
    lines += [acceptance(deploys).text, ""]
    bad = [d for d in deploys if not d.ok]
    for d in bad:
        lines.append(
            f"- {d.label} ({d.kind}) left out of the medians: exit {d.rc}, serves {d.serves}, "
            f"PRESENT lines {d.present_lines}, DONE lines {d.done_lines}, "
            f"requests {d.requests}"
        )
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"
