"""`current` and `previous`: read, and switched atomically (a temporary link renamed over)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec


@dataclass(frozen=True)
class Links:
    current: str | None
    previous: str | None

    def after_switch_to(self, target: str) -> Links:
        """The links once TARGET serves: the old current becomes previous (unless it is TARGET)."""
        previous = self.current if self.current and self.current != target else self.previous
        return Links(target, previous)


def read_links(remote: Remote, spec: Spec) -> Links:
    layout = spec.layout
    out = remote.run(
        f"echo C $(readlink {layout.link('current')} 2>/dev/null); "
        f"echo P $(readlink {layout.link('previous')} 2>/dev/null)"
    )
    cur = prev = None
    for line in out.stdout:
        tag, _, value = line.partition(" ")
        value = value.strip()
        name = value.rsplit("/", 1)[-1] if value else None
        if tag == "C":
            cur = name
        elif tag == "P":
            prev = name
    return Links(cur, prev)


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
