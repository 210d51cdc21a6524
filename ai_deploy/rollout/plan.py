"""The plan of a rollout, pure: how many hosts the canary and each batch take (a number or a
percentage of the fleet), the batches in order, each host's current → new release with what it
must build and how it goes live (ai_deploy.host.method: blue/green, or a one-copy restart that
takes it out of service), and the floor: no step takes more hosts out of service at once than
rollout_max_unavailable allows, counting hosts already unhealthy. Nothing here connects to a
host."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from ai_deploy.host import strategies
from ai_deploy.host.method import Method, choose

_COUNT = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


class PlanError(ValueError):
    """A rollout setting that cannot be used; the message names it and the fix."""


def parse_count(
    value: object, name: str, fleet: int, *, minimum: int, round_down: bool = False
) -> int:
    """VALUE (an int, "N" or "N%") as a number of hosts of a FLEET, at least MINIMUM and at most
    the fleet; a percentage rounds up, so 10% of 4 hosts is 1 (ROUND_DOWN: 30% of 4 is 1)."""
    text = str(value)
    match = _COUNT.match(text)
    if not match:
        raise PlanError(f"{name}={text!r}: use a number of hosts (2) or a percentage (25%)")
    number, percent = int(match.group(1)), bool(match.group(2))
    if percent:
        if not 0 <= number <= 100:
            raise PlanError(f"{name}={text!r}: a percentage is between 0% and 100%")
        share = fleet * number / 100
        number = math.floor(share) if round_down else math.ceil(share)
    return max(minimum, min(number, fleet))


def max_unavailable(value: object, fleet: int) -> int:
    """rollout_max_unavailable: hosts that may be out of service at once, a number or a
    percentage of the FLEET rounded down, at least 1."""
    return parse_count(value, "rollout_max_unavailable", fleet, minimum=1, round_down=True)


def make_batches(hosts: list[str], canary: object, batch_size: object) -> list[list[str]]:
    """HOSTS in order: the canary (0 hosts: none) first, then batches of BATCH_SIZE."""
    if not hosts:
        return []
    first = parse_count(canary, "rollout_canary", len(hosts), minimum=0)
    size = parse_count(batch_size, "rollout_batch_size", len(hosts), minimum=1)
    batches = [hosts[:first]] if first else []
    rest = hosts[first:]
    batches += [rest[i : i + size] for i in range(0, len(rest), size)]
    return batches


@dataclass(frozen=True)
class HostFacts:
    """What the rollout read on one host before it changed anything."""

    host: str
    address: str  # where the outside health check goes
    port: int
    health_path: str
    strategy: str
    current: str | None = None
    previous: str | None = None
    releases: list[str] = field(default_factory=list)
    venvs: list[str] = field(default_factory=list)
    lock: dict[str, object] | None = None  # who holds the lock (read for the plan only)
    model_blobs: list[str] = field(default_factory=list)  # sha256 of verified model files
    units: list[str] = field(default_factory=list)  # what its strategy restarts to go live
    lb_drain: bool = False  # drained from the load balancer before its service stops
    gpu_when_short: str = "restart"  # gpu_memory_when_short
    gpu: dict[str, object] | None = None  # blue/green: does a second copy fit (host.method)
    last_start: dict[str, object] | None = None  # Layout.last_start's measures, when recorded

    @property
    def method(self) -> Method:
        """How a release goes live here (blue/green or a one-copy restart) and how long the
        host is expected to be out of service."""
        keeps = strategies.get(self.strategy).keeps_serving
        return choose(keeps, self.lb_drain, self.gpu, self.gpu_when_short, self.last_start)

    @classmethod
    def from_json(cls, text: str) -> HostFacts:
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


NO_METHOD = Method("", False, 0.0)


@dataclass(frozen=True)
class HostPlan:
    host: str
    batch: int  # 0: the canary (when there is one)
    before: str | None
    after: str
    builds_venv: bool
    strategy: str
    fetch_files: int = 0  # model files the host must download
    fetch_bytes: int = 0
    restarts: tuple[str, ...] = ()  # the units going live restarts (none when no change)
    method: Method = NO_METHOD
    goes_live: bool = False  # its step puts a release live (changed, or a restart)

    @property
    def changes(self) -> bool:
        return self.before != self.after

    @property
    def takes_out(self) -> bool:
        """Its step takes the host out of service (it serves now: a host with no release is
        not in service to begin with)."""
        return self.goes_live and self.before is not None and self.method.out_of_service


def plan_hosts(
    facts: dict[str, HostFacts],
    batches: list[list[str]],
    release: str,
    lock_hash: str,
    model_sizes: dict[str, int] | None = None,
    targets: dict[str, str] | None = None,
    restart: bool = False,
) -> list[HostPlan]:
    """Each host's line of the plan, batch by batch. MODEL_SIZES: the release's model files
    (sha256 -> bytes); those a host has not verified yet are to be fetched there. TARGETS: the
    release each host goes to, by name, where not RELEASE (a rollback, a restart). RESTART:
    every host goes live again, changed or not."""
    plans = []
    for number, batch in enumerate(batches):
        for name in batch:
            f = facts[name]
            want = (targets or {}).get(name, release)
            builds = want not in f.releases and bool(lock_hash) and lock_hash not in f.venvs
            missing = {s: n for s, n in (model_sizes or {}).items() if s not in f.model_blobs}
            if f.current == want:
                missing = {}
            plans.append(
                HostPlan(
                    name,
                    number,
                    f.current,
                    want,
                    builds,
                    f.strategy,
                    len(missing),
                    sum(missing.values()),
                    tuple(f.units) if f.current != want else (),
                    f.method,
                    restart or f.current != want,
                )
            )
    return plans


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def batch_label(number: int, has_canary: bool) -> str:
    if has_canary:
        return "canary" if number == 0 else f"batch {number}"
    return f"batch {number + 1}"


def _out_of_service(p: HostPlan) -> str:
    if p.before is None:
        return "not in service yet"
    return f"out of service {p.method.outage}"


def render_plan(plans: list[HostPlan], has_canary: bool, wait_s: float) -> list[str]:
    """The plan as lines: one per host, grouped by batch in the order they run, each host that
    goes live with its method and expected time out of service (and, where two copies do not
    fit its GPU, the line that says so)."""
    if not plans:
        return ["plan: no host"]
    batches = max(p.batch for p in plans) + 1
    width = max(len(p.host) for p in plans)
    lines = [
        f"plan: {len(plans)} host(s) in {batches} step(s)"
        + (f", {wait_s:g} s watched after each" if wait_s and batches > 1 else "")
    ]
    for p in plans:
        before = p.before or "(none)"
        what = "no change" if not p.changes else ("venv built" if p.builds_venv else "venv reused")
        if p.fetch_files:
            what += f", {p.fetch_files} model file(s) to fetch: {_size(p.fetch_bytes)}"
        lines.append(
            f"  {batch_label(p.batch, has_canary):<8} {p.host:<{width}}  {before} -> {p.after}"
            f"  ({what}, {p.strategy})"
            + (f"  restarts {', '.join(p.restarts)}" if p.changes and p.restarts else "")
            + (f"; {p.method.name}, {_out_of_service(p)}" if p.goes_live else "")
        )
        if p.goes_live and p.method.gpu:
            lines.append(f"  {'':<8} {'':<{width}}  {p.method.gpu}")
    return lines


def plan_json(plans: list[HostPlan], has_canary: bool) -> list[dict[str, object]]:
    return [
        {
            "host": p.host,
            "step": batch_label(p.batch, has_canary),
            "before": p.before,
            "after": p.after,
            "changes": p.changes,
            "builds_venv": p.builds_venv,
            "strategy": p.strategy,
            "fetch_files": p.fetch_files,
            "fetch_bytes": p.fetch_bytes,
            "restarts": list(p.restarts),
            "method": p.method.name if p.goes_live else None,
            "out_of_service": p.takes_out,
            "expected_outage_s": p.method.outage_s if p.takes_out else 0,
            "gpu": p.method.gpu if p.goes_live else "",
        }
        for p in plans
    ]
