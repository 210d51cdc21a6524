"""What a deploy strategy is: one protocol, one module per strategy (restart, socket, bluegreen).

A strategy owns its unit files, its test of "this host runs me, steadily", how a prepared
release goes live on a host with its own switch-back, and how it is left when the host moves to
another strategy. Callers look a strategy up once by name (`strategies.get`) and never dispatch
on the name again."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ai_deploy.host.facts import AppTree
from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import Layout
from ai_deploy.host.release.links import Links
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec


@dataclass(frozen=True)
class UnitFile:
    """A unit file a strategy needs: rendered from TEMPLATE (in templates/) to UNIT_DIR/UNIT."""

    template: str
    unit: str
    context: dict[str, Any] = field(default_factory=dict)  # besides the common unit values


@dataclass(frozen=True)
class Live:
    """A release went live: a one-line summary and the revisions.log detail."""

    summary: str
    journal: str


Leave = Callable[[], None]


class Strategy(Protocol):
    name: str
    # True: the old copy serves until the new one is ready (the host never leaves service);
    # False: one copy, out of service from its stop until the new one is ready.
    keeps_serving: bool

    def unit_files(self, data: Any) -> list[UnitFile]:
        """The unit files this strategy needs on a host with pyinfra data DATA."""
        ...

    def prepare_host(self, data: Any) -> None:
        """Anything else the host needs for this strategy (pyinfra operations; often none)."""
        ...

    def units(self, layout: Layout) -> list[str]:
        """The names of the units in unit_files."""
        ...

    def boot_units(self, layout: Layout) -> list[str]:
        """Units the unit task enables at boot (the rest are enabled when a release goes live)."""
        ...

    def is_steady(self, tree: AppTree, layout: Layout) -> bool:
        """True when the host's units are in this strategy's steady state."""
        ...

    def go_live(self, remote: Remote, spec: Spec, before: Links, leave_others: Leave) -> Live:
        """Put the prepared release SPEC.release_id in service, or switch back and raise
        DeployFailed with the outcome (the caller holds the lock and journals). LEAVE_OTHERS
        takes the host out of every other strategy; it is called when this one takes the port."""
        ...

    def leave(self, remote: Remote, spec: Spec, keep: set[str]) -> bool:
        """Stop and disable this strategy's units (frees the public port) and remove their files,
        except the units in KEEP (the new strategy's); False when the host had none of them."""
        ...


def is_active(remote: Remote, unit: str) -> bool:
    return remote.run(f"systemctl is-active --quiet {shlex.quote(unit)}").ok


def must(remote: Remote, script: str, what: str) -> None:
    result = remote.run(script)
    if not result.ok:
        detail = " ".join((result.stderr or result.stdout)[-3:])
        raise DeployFailed("switch", f"{what} failed: {detail}")


def remove_unit_file(remote: Remote, layout: Layout, unit: str) -> None:
    path = shlex.quote(layout.unit_file(unit))
    remote.run(f"if [ -e {path} ]; then rm -f {path} && systemctl daemon-reload; fi")
