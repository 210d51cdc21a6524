"""The scenarios, the two kinds of target (the seed's procedure, our deploy with a strategy) and
how one scenario is measured on one target: steady load, the deploy, a tail after it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ai_deploy.sandbox import hosts
from bench import ours, seed
from bench.metrics import Summary, summarize
from bench.proc import CmdResult
from testkit.load import LoadGenerator, RequestRecord, http_get
from testkit.variants import Variant

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    variant: str  # the variant the deploy puts in service (the rollback's target for the seed)
    prep: tuple[str, ...] = ()  # deployed, unmeasured, after the reset to base
    rollback: bool = False  # ours: --data rollback=previous; seed: re-deploy `variant`
    quick: bool = False  # part of --quick


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("same", "Redeploy the same artifact", "base", quick=True),
    Scenario("code", "New code, same uv.lock", "code", quick=True),
    Scenario("lock", "New code, changed uv.lock (adds a dependency)", "lock"),
    Scenario("crash", "Release that crashes at start (raise at import)", "crash", quick=True),
    Scenario("health500", "Release whose /health answers 500", "health500"),
    Scenario(
        "rollback",
        "Rollback to the previous release (seed: re-deploy the previous artifact)",
        "base",
        prep=("code",),
        rollback=True,
    ),
)


def scenario(key: str) -> Scenario:
    for s in SCENARIOS:
        if s.key == key:
            return s
    raise KeyError(f"unknown scenario {key!r} (known: {', '.join(s.key for s in SCENARIOS)})")


@dataclass
class Outcome:
    """One deploy as its runner saw it."""

    ok: bool
    result: str  # what the person running it sees: exit status, job colour, rollback
    started: float  # time.monotonic
    ended: float
    log: str
    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


class DeployError(Exception):
    """An unmeasured deploy (set-up, reset, preparation) did not leave a healthy host."""


class HostGone(Exception):
    """A host this run started is no longer there (removed from outside): its address may now
    belong to someone else's host, so the run stops sending traffic and ends."""


def check_host(name: str, address: str) -> None:
    """Raise HostGone unless the sandbox host NAME still runs at ADDRESS."""
    found = [h for h in hosts.list_hosts() if h.name == name]
    if not found or found[0].address != address or not found[0].running:
        raise HostGone(f"sandbox host {name} ({address}) is gone: was it removed from outside?")


def wait_healthy(address: str, timeout: float, interval: float = 0.2) -> bool:
    """Poll /health (our own quick poll, for unmeasured steps) until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(address, 8000, "/health", 2.0).code == 200:
            return True
        time.sleep(interval)
    return False


class Target:
    """A host and the procedure that deploys to it."""

    name: str
    address: str
    host_name: str = ""  # the sandbox host's name (checked before and after each measurement)
    client_timeout: float
    serving: str | None = None  # the variant known to serve (None: unknown)
    ready_timeout: float = 120.0

    def deploy(self, variant: Variant, echo: Echo | None) -> Outcome:
        raise NotImplementedError

    def rollback(self, previous: Variant, echo: Echo | None) -> Outcome:
        raise NotImplementedError

    def put(self, variant: Variant, echo: Echo | None) -> None:
        """Unmeasured: put VARIANT in service and wait until it answers /health."""
        outcome = self._put(variant, echo)
        if not outcome.ok or not wait_healthy(self.address, self.ready_timeout):
            self.serving = None
            raise DeployError(
                f"{self.name}: could not put {variant.label} in service ({outcome.result}):\n"
                + "\n".join(outcome.log.splitlines()[-20:])
            )
        self.serving = variant.label

    def _put(self, variant: Variant, echo: Echo | None) -> Outcome:
        return self.deploy(variant, echo)


class SeedTarget(Target):
    def __init__(
        self,
        address: str,
        client_timeout: float,
        attempts: int = seed.HEALTH_ATTEMPTS,
        interval_s: float = seed.HEALTH_INTERVAL_S,
    ) -> None:
        self.name = "seed"
        self.address = address
        self.client_timeout = client_timeout
        self.attempts = attempts
        self.interval_s = interval_s

    @staticmethod
    def _outcome(run: seed.SeedRun) -> Outcome:
        result = "green" if run.ok else f"red ({run.failed_step})"
        return Outcome(run.ok, result, run.started, run.ended, run.log(), run.lines())

    def deploy(self, variant: Variant, echo: Echo | None) -> Outcome:
        run = seed.run_job(
            self.address,
            variant.path,
            attempts=self.attempts,
            interval_s=self.interval_s,
            echo=echo,
        )
        return self._outcome(run)

    def rollback(self, previous: Variant, echo: Echo | None) -> Outcome:
        # The guide's rollback: re-run the old job, i.e. deploy the previous artifact again.
        return self.deploy(previous, echo)

    def _put(self, variant: Variant, echo: Echo | None) -> Outcome:
        # Unmeasured: the same job without the 12 x 5 s poll (wait_healthy polls instead).
        return self._outcome(seed.run_job(self.address, variant.path, poll=False, echo=echo))


class OursTarget(Target):
    def __init__(self, strategy: str, address: str, inventory: Path, client_timeout: float) -> None:
        self.name = strategy
        self.strategy = strategy
        self.address = address
        self.inventory = inventory
        self.client_timeout = client_timeout

    def _outcome(self, cmd: CmdResult) -> Outcome:
        if cmd.timed_out:
            result = "killed (time limit)"
        elif cmd.rc == 0:
            result = "ok"
        elif "rolled back to" in cmd.output:
            result = f"failed, rolled back (exit {cmd.rc})"
        elif "keeps serving" in cmd.output:
            result = f"failed, old release kept serving (exit {cmd.rc})"
        else:
            result = f"failed (exit {cmd.rc})"
        return Outcome(cmd.rc == 0, result, cmd.started, cmd.ended, cmd.output, cmd.lines)

    def deploy(self, variant: Variant, echo: Echo | None) -> Outcome:
        return self._outcome(
            ours.run(self.inventory, self.strategy, f"artifact={variant.path}", echo=echo)
        )

    def rollback(self, previous: Variant, echo: Echo | None) -> Outcome:
        cmd = ours.run(self.inventory, self.strategy, "rollback=previous", echo=echo)
        return self._outcome(cmd)


@dataclass(frozen=True)
class Windows:
    steady_s: float = 5.0  # load before the deploy starts (the steady-state reference)
    tail_s: float = 5.0  # load after the deploy ends
    rate: float = 20.0  # requests per second
    deploy_limit_s: float = 1800.0  # the load stops itself after steady + this + tail


@dataclass
class Measurement:
    scenario: str
    target: str
    model_load_s: float
    client_timeout_s: float
    outcome: Outcome | None = None
    summary: Summary | None = None
    records: list[RequestRecord] = field(default_factory=list)
    t0: float = 0.0  # the load's start (time.monotonic); record times are relative to it
    deploy_start: float = 0.0  # relative to t0
    deploy_end: float = 0.0
    end: float = 0.0
    error: str | None = None  # why it was not measured
    detail: str = ""  # the long story behind `error` (in the logs)


def measure(
    target: Target,
    sc: Scenario,
    variants: dict[str, Variant],
    windows: Windows,
    model_load_s: float,
    echo: Echo | None = None,
) -> Measurement:
    """Reset TARGET to base (unmeasured), prepare, then measure the scenario's deploy."""
    m = Measurement(sc.key, target.name, model_load_s, target.client_timeout)
    if target.host_name:
        check_host(target.host_name, target.address)
    try:
        if target.serving != "base" or not wait_healthy(target.address, 2):
            target.put(variants["base"], None)
        for label in sc.prep:
            target.put(variants[label], None)
    except DeployError as exc:
        m.error = "not measured: could not return the host to the base release"
        m.detail = str(exc)
        return m
    if target.host_name:
        check_host(target.host_name, target.address)
    gen = LoadGenerator(
        target.address,
        rate=windows.rate,
        timeout=target.client_timeout,
        max_duration=windows.steady_s + windows.deploy_limit_s + windows.tail_s + 30,
    ).start()
    m.t0 = gen.t0
    try:
        time.sleep(windows.steady_s)
        if sc.rollback:
            outcome = target.rollback(variants[sc.variant], echo)
        else:
            outcome = target.deploy(variants[sc.variant], echo)
        time.sleep(windows.tail_s)
        m.end = gen.now()
    finally:
        m.records = gen.stop()
    m.outcome = outcome
    m.deploy_start = outcome.started - gen.t0
    m.deploy_end = outcome.ended - gen.t0
    m.summary = summarize(
        m.records,
        steady=(0.0, m.deploy_start - 1e-6),
        deploy=(m.deploy_start, m.deploy_end),
        end=m.end,
        interval=1 / windows.rate,
    )
    if target.host_name:
        check_host(target.host_name, target.address)  # else the load may have hit another host
    target.serving = m.summary.serves_after if outcome.ended else None
    return m
