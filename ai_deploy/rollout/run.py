"""One rollout, step by step (a deploy, a rollback or a restart: `Rollout.action`): every
lock held (ai_deploy.rollout.fleetlock), the plan printed, then the canary and each batch put
live by one pyinfra run limited to its hosts, each host's health checked from outside, the
switched hosts watched for rollout_wait_s between steps. Any failure stops it and switches every
host it switched back to the release that host served before, through the same release gate,
with the locks still held. No step, switch-backs included, takes more hosts out of service than
rollout_max_unavailable allows, counting unhealthy hosts (ai_deploy.rollout.floor): a plan that
would is refused before any change, a later step that would is not started. A lock the holder
lost (its lease taken over, or a host silent for most of a lease) stops it before its next step
or switch-back, and from then on it changes no host. A rollback puts each host on the release it
served before its current one (or the one named), a restart restarts each host's current release
behind the gate, one host a step; both are the same steps, outside check and switch-back."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ai_deploy.host import outcome as host_outcome
from ai_deploy.rollout import exitcodes, report
from ai_deploy.rollout.fleetlock import Fleet, holding
from ai_deploy.rollout.floor import Floor
from ai_deploy.rollout.health import check_health, unhealthy_now
from ai_deploy.rollout.plan import (
    HostFacts,
    HostPlan,
    PlanError,
    batch_label,
    make_batches,
    plan_hosts,
    render_plan,
)
from ai_deploy.rollout.pyinfra_run import run_pyinfra_streamed
from ai_deploy.rollout.report import HostResult


@dataclass(frozen=True)
class Health:
    attempts: int
    interval_s: float
    timeout_s: float
    url: str | None = None  # one URL for every host (a load balancer's): None, each host's own
    # where each host's health is asked, by name, when not where SSH reaches it (IAP)
    addresses: Mapping[str, str] = field(default_factory=dict)

    def url_of(self, f: HostFacts) -> str:
        address = self.addresses.get(f.host) or f.address
        return self.url or f"http://{address}:{f.port}{f.health_path}"


@dataclass
class Rollout:
    """What one rollout needs. CANARY, BATCH_SIZE and WAIT_S: None takes group_data's. ACTION:
    "deploy" (ARTIFACT, as RELEASE), "rollback" (RELEASE: a release id, or "previous": each
    host's previous one) or "restart" (each host's current release; one host a step)."""

    inventory: str
    artifact: Path
    release: str
    lock_hash: str
    data: Sequence[str]
    env: Mapping[str, str]
    health: Health
    chosen: Sequence[str] = ()
    canary: str | None = None
    batch_size: str | None = None
    wait_s: float | None = None
    say: Callable[[str], None] = print
    model_sizes: dict[str, int] = field(default_factory=dict)  # the release's model files
    token: str = field(default_factory=lambda: "rollout-" + secrets.token_hex(8))
    action: str = "deploy"

    def target_of(self, f: HostFacts) -> str:
        """The release host F is to serve after its step; PlanError when it has none."""
        if self.action == "restart":
            if not f.current:
                raise PlanError(f"{f.host}: no release is deployed there: nothing to restart")
            return f.current
        if self.action != "rollback":
            return self.release
        target = f.previous if self.release == "previous" else self.release
        if not target:
            raise PlanError(
                f"{f.host}: no previous release to roll back to; name one of its releases "
                f"(kept: {', '.join(f.releases) or 'none'})"
            )
        if target not in f.releases:
            kept = ", ".join(f.releases) or "none"
            raise PlanError(f"{f.host}: release {target} is not on the host (kept: {kept})")
        return target

    def step_data(self) -> list[str]:
        """The pyinfra run's data for one step: what it does, under the rollout's locks."""
        what = {
            "deploy": f"artifact={self.artifact.resolve()}",
            "rollback": f"rollback={self.release}",
            "restart": "restart_current=true",
        }[self.action]
        return [what, f"rollout_lock_token={self.token}", *self.data]


@dataclass
class Outcome:
    code: int
    message: str
    plan: list[dict[str, object]]
    results: list[HostResult]
    failed_phase: str | None = None
    floor: dict[str, object] = field(default_factory=dict)  # the plan's floor, as data


def _steps(r: Rollout, fleet: Fleet) -> tuple[list[list[str]], bool, float]:
    s = fleet.settings
    canary = r.canary if r.canary is not None else s.get("rollout_canary", "1")
    size = r.batch_size if r.batch_size is not None else s.get("rollout_batch_size", "25%")
    wait = r.wait_s if r.wait_s is not None else float(str(s.get("rollout_wait_s") or 0))
    if len(fleet.facts) == 1:  # a single target: a rollout of one host, no canary
        canary = "0"
    if r.action == "restart":  # one host at a time, so a fleet keeps serving
        canary, size = "0", "1"
    batches = make_batches(list(fleet.facts), canary, size)
    has_canary = str(canary).strip() not in ("0", "0%")
    return batches, has_canary, wait


def plan_only(r: Rollout) -> Outcome:
    """The plan, from each host's state; no lock taken, nothing changed."""
    with holding(r.inventory, r.token, r.release, r.chosen, r.data, r.env, take_locks=False) as f:
        batches, has_canary, wait = _steps(r, f)
    return _planned(r, f, batches, has_canary, wait)[0]


def _unhealthy(r: Rollout, f: Fleet, names: Iterable[str]) -> dict[str, str]:
    if r.health.url:  # one URL for every host (a load balancer's): it cannot say which host
        return {}
    urls = {name: r.health.url_of(f.facts[name]) for name in names}
    return unhealthy_now(urls, r.health.timeout_s, check_health)


_Plan = tuple[dict[str, HostPlan], Floor]  # each host's line, by name, and the floor


def _planned(
    r: Rollout, f: Fleet, batches: list[list[str]], canary: bool, wait: float
) -> tuple[Outcome, dict[str, HostPlan], Floor]:
    """The plan, printed, and refused (PlanError, before any change) when a step would break
    the floor with the hosts that are unhealthy now."""
    from ai_deploy.rollout.plan import plan_json

    targets = {name: r.target_of(facts) for name, facts in f.facts.items()}
    plans = plan_hosts(
        f.facts, batches, r.release, r.lock_hash, r.model_sizes, targets, r.action == "restart"
    )
    for line in render_plan(plans, canary, wait):
        r.say(line)
    for name, facts in f.facts.items():
        if facts.lock and facts.lock.get("token") != r.token:  # another deploy's, now
            r.say(f"  {name} is locked now: {facts.lock.get('who')} ({facts.lock.get('action')})")
    floor = Floor.of(f.settings.get("rollout_max_unavailable") or "1", len(f.facts))
    r.say(floor.line())
    down = _unhealthy(r, f, [name for name, facts in f.facts.items() if facts.current])
    for name, why in down.items():
        r.say(f"  {name} is out of service now: {why}")
    steps = [
        (batch_label(n, canary), [p for p in plans if p.batch == n]) for n in range(len(batches))
    ]
    refused = floor.first_breach(steps, down)
    if refused:
        raise PlanError(f"{refused}; nothing changed on any host")
    results = [HostResult(p.host, batch_label(p.batch, canary), p.before, p.before) for p in plans]
    out = Outcome(exitcodes.EXIT_OK, "", plan_json(plans, canary), results, floor=floor.data())
    return out, {p.host: p for p in plans}, floor


def run_rollout(r: Rollout, sink: Callable[[Outcome], None] | None = None) -> Outcome:
    """The rollout; SINK gets its Outcome as soon as the plan is made (then updated in place),
    so a caller stopped by a signal still has each host's state as far as it is known."""
    with holding(r.inventory, r.token, r.release, r.chosen, r.data, r.env) as fleet:
        batches, has_canary, wait = _steps(r, fleet)
        out, plans, floor = _planned(r, fleet, batches, has_canary, wait)
        if sink is not None:
            sink(out)
        steps = _Steps(r, fleet, out, wait, (plans, floor))
        try:
            steps.run(batches, has_canary)
        except BaseException:
            # Stopped (a signal): say where each host is, as far as is known, then go on
            # stopping; the hosts of the step that was running may be on either release.
            for res in out.results:
                if res.host in steps.running and res.outcome == report.NOT_REACHED:
                    res.after, res.outcome = None, report.INTERRUPTED
            r.say("rollout stopped before its end; where each host is:")
            for line in report.render_table(out.results):
                r.say(line)
            raise
    for line in report.render_table(out.results):
        r.say(line)
    return out


_HOST_OUTCOME = {
    host_outcome.SWITCH_BACK_FAILED: report.STUCK,
    host_outcome.SWITCHED_BACK: report.SWITCHED_BACK,
}


class _Steps:
    def __init__(self, r: Rollout, fleet: Fleet, out: Outcome, wait: float, plan: _Plan):
        self.r, self.fleet, self.facts, self.out, self.wait = r, fleet, fleet.facts, out, wait
        self.plans, self.floor = plan
        self.by_host = {x.host: x for x in out.results}
        self.switched: list[str] = []  # hosts this rollout put on the new release, in order
        self.unhealthy_outside = False  # a host failed the outside check (or while watched)
        self.running: list[str] = []  # the hosts of the step in progress

    def run(self, batches: list[list[str]], has_canary: bool) -> None:
        for number, batch in enumerate(batches):
            label = batch_label(number, has_canary)
            if self._lost(f"before {label}"):
                return
            if number and not self._floor_holds(label, batch):
                return
            self.running = batch
            self.r.say(f"== {label}: {', '.join(batch)}")
            failure = self._step(batch) or self._outside_health(batch)
            if not failure and self.wait and number < len(batches) - 1:
                failure = self._watch()
            if failure:
                self.r.say(f"rollout stopped in {label}: {failure}")
                self.out.failed_phase = (
                    "deploy" if self.out.code == exitcodes.EXIT_DEPLOY else "health"
                )
                self._switch_back(failure)
                return
        if self.r.action == "deploy":
            self.out.message = f"release {self.r.release} serves on {len(self.facts)} host(s)"
        else:
            self.out.message = f"{self.r.action} done; {self._serving()}"

    def _floor_holds(self, label: str, batch: list[str]) -> bool:
        """True when BATCH's step keeps the floor with the hosts unhealthy now; else the
        rollout stops before it (nothing of it changed) and says why."""
        serving = [n for n, f in self.facts.items() if f.current or n in self.switched]
        down = _unhealthy(self.r, self.fleet, serving)
        why = self.floor.breach(label, [self.plans[n] for n in batch], down)
        if not why:
            return True
        self.r.say(f"rollout stopped before {label}: {why}")
        self.out.code, self.out.failed_phase = exitcodes.EXIT_FLOOR, "deploy"
        self.out.message = (
            f"{why}; stopped before {label}, which changed nothing; the hosts already switched "
            f"keep their release (run again once the hosts are back: a host already on the "
            f"release is left alone); {self._serving()}"
        )
        return False

    def _step(self, batch: list[str]) -> str:
        result = run_pyinfra_streamed(self.r.inventory, self.r.step_data(), self.r.env, limit=batch)
        tail = result.unexplained_tail()
        if tail:
            self.r.say("\n".join(["last lines of the pyinfra run:", *tail]))
        failures = []
        for name in batch:
            res, o = self.by_host[name], result.outcomes.get(name)
            if o is None:
                res.outcome, res.detail = report.FAILED, "reported nothing"
                failures.append(f"{name}: no outcome (pyinfra exit {result.returncode})")
                continue
            res.seconds = o.seconds
            if o.status == host_outcome.SERVED:
                res.after, res.outcome = o.serving or o.release, report.UPDATED
                if o.previous != res.after:
                    self.switched.append(name)
                if self.r.action == "restart":
                    self.r.say(f"{name} | release {res.after} restarted and healthy")
            elif o.status == host_outcome.ALREADY_SERVING:
                res.after, res.outcome = o.serving or o.release, report.UNCHANGED
            else:
                res.after = o.serving or (
                    None if o.status == host_outcome.SWITCH_BACK_FAILED else res.before
                )
                res.outcome = (
                    report.STUCK
                    if o.status == host_outcome.SWITCH_BACK_FAILED
                    else (
                        report.SWITCHED_BACK
                        if o.status == host_outcome.SWITCHED_BACK
                        else report.FAILED
                    )
                )
                res.detail = o.phase or ""
                failures.append(f"{name}: {o.status}" + (f" in {o.phase}" if o.phase else ""))
        if failures:
            self.out.code = exitcodes.exit_for_outcomes(result.outcomes.values(), batch)
        return "; ".join(failures)

    def _outside_health(self, hosts: list[str]) -> str:
        for name in hosts:
            url = self.r.health.url_of(self.facts[name])
            h = self.r.health
            ok, why = check_health(url, h.attempts, h.interval_s, h.timeout_s, self.r.say)
            self.r.say(f"{name}: {why}")
            if not ok:
                self.out.code, self.unhealthy_outside = exitcodes.EXIT_SWITCHED_BACK, True
                return f"{name}: {why}"
        return ""

    def _lost(self, where: str, due: Sequence[str] = (), failure: str = "") -> bool:
        """True, with the outcome set, when a lock is lost: the rollout stops WHERE and changes
        no host any more; DUE: the hosts that were to be switched back (after FAILURE) and
        are not."""
        lost = self.fleet.lost_lock()
        if lost is None:
            return False
        self.r.say(f"rollout stopped {where}: {lost}; no host is changed any more")
        for name in due:
            self.by_host[name].detail = "not switched back: a lock was lost"
        self.out.code = exitcodes.EXIT_SWITCH_BACK_FAILED if due else exitcodes.EXIT_DEPLOY
        self.out.failed_phase = "rollback" if due else "deploy"
        stopped = f"{lost}; stopped {where}, nothing more changed; {self._serving()}"
        self.out.message = f"{failure}; {stopped}" if failure else stopped
        return True

    def _serving(self) -> str:
        return "now serving: " + ", ".join(
            f"{x.host}: {x.after or 'unknown'}" for x in self.out.results
        )

    def _watch(self) -> str:
        """The switched hosts' health, every interval, for the bake time (cut short, with no
        failure, when a lock is lost: the next step's check stops the rollout)."""
        self.r.say(f"watching {len(self.switched)} host(s) for {self.wait:g} s")
        end = time.monotonic() + self.wait
        while self.fleet.lost_lock() is None:
            for name in self.switched:
                url = self.r.health.url_of(self.facts[name])
                ok, why = check_health(url, 1, 0, self.r.health.timeout_s, lambda _: None)
                if not ok:
                    self.out.code, self.unhealthy_outside = exitcodes.EXIT_SWITCHED_BACK, True
                    return f"{name} while watched: {why}"
            if time.monotonic() >= end:
                return ""
            time.sleep(min(self.r.health.interval_s, max(0.0, end - time.monotonic())))
        return ""

    def _switch_back(self, failure: str) -> None:
        """Every switched host back to the release it served before, grouped by that release,
        in steps that keep the floor: the hosts a restart takes out of service at most
        rollout_max_unavailable at a time, never all at once."""
        groups: dict[str, list[str]] = {}
        for name in self.switched:
            before = self.facts[name].current
            if before is None:
                res = self.by_host[name]
                res.outcome, res.detail = report.UPDATED, "had no release before: left on it"
                continue
            groups.setdefault(before, []).append(name)
        back_ok = True
        order = [
            (before, chunk)
            for before, names in groups.items()
            for chunk in self.floor.chunks([self.plans[n] for n in names])
        ]
        for number, (before, names) in enumerate(order):
            due = [name for _, later in order[number:] for name in later]
            if self._lost(f"before switching back {', '.join(due)}", due, failure):
                return
            self.r.say(f"switching back {', '.join(names)} to {before}")
            data = [f"rollback={before}", f"rollout_lock_token={self.r.token}"]
            result = run_pyinfra_streamed(
                self.r.inventory, [*data, *self.r.data], self.r.env, limit=names
            )
            for name in names:
                res, o = self.by_host[name], result.outcomes.get(name)
                healthy = o is not None and o.ok
                if healthy:
                    h = self.r.health
                    url = h.url_of(self.facts[name])
                    healthy, _ = check_health(
                        url, h.attempts, h.interval_s, h.timeout_s, self.r.say
                    )
                if healthy:
                    res.after, res.outcome = before, report.SWITCHED_BACK
                else:
                    res.after, res.outcome, back_ok = None, report.STUCK, False
        if not back_ok:
            self.out.code, self.out.failed_phase = exitcodes.EXIT_SWITCH_BACK_FAILED, "rollback"
        elif groups and self.out.code != exitcodes.EXIT_SWITCH_BACK_FAILED:
            # Hosts went back: the fleet serves the previous release again (15), whatever
            # stopped the rollout; with nothing to switch back, the failing step's code stays.
            self.out.code = exitcodes.EXIT_SWITCHED_BACK
        elif not groups and self.unhealthy_outside:
            # Unhealthy from outside and nothing this run switched to put back (the hosts
            # already served the release, or had none before): it still serves there (16).
            self.out.code = exitcodes.EXIT_SWITCH_BACK_FAILED
        self.out.message = f"{failure}; {self._serving()}"
