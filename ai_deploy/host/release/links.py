"""`current` and `previous`: read, and switched atomically (a temporary link renamed over)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec


@dataclass(frozen=True)
class Links:
    """`current` and `previous`, and the releases recorded healthy (they passed the gate)."""

    current: str | None
    previous: str | None
    healthy: frozenset[str] = frozenset()

    def _healthy_other(self, name: str | None, target: str) -> str | None:
        return name if name and name != target and name in self.healthy else None

    def after_switch_to(self, target: str) -> Links:
        """The links once TARGET serves: the old current becomes previous when it passed the
        gate, else the old previous stays when it did; `previous` never names anything else."""
        previous = self._healthy_other(self.current, target) or self._healthy_other(
            self.previous, target
        )
        return Links(target, previous, self.healthy)

    def switch_back(self, target: str) -> Links | None:
        """The links that put the newest release that passed the gate (other than TARGET) back
        in service; None when there is none."""
        current = self._healthy_other(self.current, target)
        if current:
            return Links(current, self._healthy_other(self.previous, current), self.healthy)
        previous = self._healthy_other(self.previous, target)
        return Links(previous, None, self.healthy) if previous else None


def read_links(remote: Remote, spec: Spec) -> Links:
    layout = spec.layout
    out = remote.run(
        f"echo C $(readlink {layout.link('current')} 2>/dev/null); "
        f"echo P $(readlink {layout.link('previous')} 2>/dev/null); "
        f"ls -1 {layout.healthy} 2>/dev/null | sed 's/^/H /'; true"
    )
    cur = prev = None
    healthy: set[str] = set()
    for line in out.stdout:
        tag, _, value = line.partition(" ")
        value = value.strip()
        name = value.rsplit("/", 1)[-1] if value else None
        if tag == "C":
            cur = name
        elif tag == "P":
            prev = name
        elif tag == "H" and value:
            healthy.add(value)
    return Links(cur, prev, frozenset(healthy))


def set_links(remote: Remote, spec: Spec, links: Links) -> None:
    """Point `current` and `previous` atomically (temporary link renamed over the old one)."""
    layout = spec.layout
    parts = []
    for name, target in (("current", links.current), ("previous", links.previous)):
        path = layout.link(name)
        if target is None:
            parts.append(f"rm -f {path}")
        else:
            tmp = f"{layout.root}/.{name}.tmp"
            parts.append(f"ln -sfn releases/{shlex.quote(target)} {tmp} && mv -T {tmp} {path}")
    result = remote.run(" && ".join(parts))
    if not result.ok:
        raise DeployFailed(
            "switch", f"could not switch {spec.app_root}/current: {tail(result.stderr)}"
        )
