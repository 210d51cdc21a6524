"""The floor of a rollout: no step (the canary, a batch, a switch-back) takes more hosts out of
service at once than rollout_max_unavailable allows (a number of hosts or a percentage of the
fleet, rounded down, at least 1), counting the hosts already unhealthy. A host is out of
service during its step when its method says so (ai_deploy.host.method: a one-copy restart,
or any host drained with lb_drain); blue/green keeps serving. Pure: the plan's hosts and the
unhealthy ones in, the verdict and its words out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ai_deploy.rollout.plan import HostPlan, max_unavailable

SETTING = "rollout_max_unavailable"


@dataclass(frozen=True)
class Floor:
    setting: str  # the value as given ("1", "25%")
    allowed: int  # hosts that may be out of service at once
    fleet: int

    @classmethod
    def of(cls, value: object, fleet: int) -> Floor:
        return cls(str(value), max_unavailable(value, fleet), fleet)

    def line(self) -> str:
        """The plan's line for the floor."""
        hosts = "host" if self.allowed == 1 else "hosts"
        return f"at most {self.allowed} {hosts} out of service at once ({SETTING}={self.setting})"

    def data(self) -> dict[str, object]:
        return {SETTING: self.setting, "allowed": self.allowed, "fleet": self.fleet}

    def out_during(self, step: Sequence[HostPlan], unhealthy: Iterable[str]) -> list[str]:
        """Each host out of service while STEP runs, with why: the step's own, then the rest."""
        taken = [p for p in step if p.takes_out]
        out = [f"{p.host}: {p.method.name}" for p in taken]
        names = {p.host for p in taken}
        out += [f"{h}: unhealthy now" for h in sorted(set(unhealthy) - names)]
        return out

    def breach(self, label: str, step: Sequence[HostPlan], unhealthy: Iterable[str]) -> str:
        """ "" when STEP (called LABEL) keeps the floor; else what it breaks and the fix."""
        down = set(unhealthy)
        out = self.out_during(step, down)
        if len(out) <= self.allowed:
            return ""
        taking = [p.host for p in step if p.takes_out and p.host not in down]
        room = self.allowed - len(down - {p.host for p in step if p.takes_out})
        fixes = []
        if room >= 1 and len(taking) > room:
            fixes.append(
                f"steps of at most {room} such host(s) (--batch-size / rollout_batch_size, "
                "--canary / rollout_canary)"
            )
        if down:
            fixes.append(f"bring {', '.join(sorted(down))} back into service first")
        fixes.append(f"allow more: {SETTING}={len(out)} (--data or ai-deploy.toml)")
        return (
            f"{label} would take {len(out)} of {self.fleet} host(s) out of service at once "
            f"({'; '.join(out)}), but {SETTING}={self.setting!r} allows {self.allowed}; "
            f"fix: {', or '.join(fixes)}"
        )

    def first_breach(
        self, steps: Sequence[tuple[str, Sequence[HostPlan]]], unhealthy: Iterable[str]
    ) -> str:
        """The first of STEPS (label, hosts) that breaks the floor, said; "" when none does."""
        down = set(unhealthy)
        for label, step in steps:
            why = self.breach(label, step, down)
            if why:
                return why
        return ""

    def chunks(self, hosts: Sequence[HostPlan]) -> list[list[str]]:
        """HOSTS in steps that keep the floor, in order: those a step takes out of service, at
        most `allowed` at a time; those that keep serving join the first step."""
        serving = [p.host for p in hosts if not p.method.out_of_service]
        out = [p.host for p in hosts if p.method.out_of_service]
        steps = [out[i : i + self.allowed] for i in range(0, len(out), self.allowed)] or [[]]
        steps[0][:0] = serving
        return [step for step in steps if step]
