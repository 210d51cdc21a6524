"""The process that holds a rollout's locks: `python -m ai_deploy.rollout.holder`, started by
the rollout (ai_deploy.rollout.fleetlock) and talking to it in lines on stdout.

It connects to the chosen hosts of the inventory, takes every host's deploy lock in a fixed
order (by host name, so two rollouts over overlapping fleets cannot each hold a part), with the
rollout's token in the lock's info, and reads each host's state. A host already locked stops
it before anything changes: the locks it took are dropped and the holder is named. While the
rollout runs, it renews every lease, all hosts at once (ai_deploy.rollout.leases), and says at
once when one is lost; when its stdin closes (the rollout ended, or died), it drops the locks.
With `facts` it takes nothing: it reads and prints the state (`--plan`).

stdout protocol: `SETTINGS <json>` (the rollout's settings), `FACTS <json>` per host, then
`HELD` (or `DONE` for facts); `UNKNOWN`, `UNREACHABLE` or `REFUSED <host>\\t<why>` end it
with exit 2, 4 or 3; after `HELD`, `LOST <host>\\t<why>` as soon as a host's lease is lost
(the holder goes on renewing the others); `RELEASED` at the end."""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from ai_deploy.host import strategies
from ai_deploy.host.facts import read_tree
from ai_deploy.host.method import method_script, parse_method_facts
from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.release.lock import acquire_lock
from ai_deploy.host.settings import Spec
from ai_deploy.host.strategies import bluegreen
from ai_deploy.inventory import RemoteError, connected_partly
from ai_deploy.rollout.leases import BoundedRemote, FleetLeases, HeldLock
from ai_deploy.rollout.plan import HostFacts

SETTINGS = ("rollout_canary", "rollout_batch_size", "rollout_wait_s", "rollout_max_unavailable")


def _get(data: Any, name: str) -> object:
    value = data.get(name) if isinstance(data, dict) else getattr(data, name, None)
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


_OUT = threading.Lock()  # renewal threads write LOST lines too


def _out(line: str) -> None:
    with _OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _facts(remote: Any, spec: Spec, address: str) -> HostFacts:
    tree = read_tree(remote, spec.layout)
    live = tree.live if spec.strategy == bluegreen.name else None
    more = parse_method_facts(remote.run(method_script(spec.layout, live)).stdout, live)
    return HostFacts(
        host=remote.name,
        address=address,
        port=spec.port,
        health_path=spec.health_path,
        strategy=spec.strategy,
        current=tree.current,
        previous=tree.previous,
        releases=list(tree.releases),
        venvs=list(tree.venvs),
        lock=tree.lock,
        model_blobs=more.blobs,
        units=_going_live(spec, live),
        lb_drain=spec.lb_drain,  # as the host reads it (ai_deploy.host.settings.flag)
        gpu_when_short=spec.gpu_memory_when_short,
        gpu=more.gpu,
        last_start=more.last_start,
    )


def _going_live(spec: Spec, live: str | None) -> list[str]:
    """The units a release going live restarts: blue/green's idle colour (blue when none is
    live, as its go_live picks), else the strategy's units."""
    if spec.strategy == bluegreen.name:
        return [spec.layout.colour_unit("green" if live == "blue" else "blue")]
    return strategies.get(spec.strategy).units(spec.layout)


def _wait_for_eof() -> None:
    """Until stdin closes (select, not a blocking read: under gevent it lets the renewal
    threads run)."""
    fd = sys.stdin.fileno()
    while True:
        select.select([fd], [], [])
        if not os.read(fd, 4096):
            return


def main(argv: list[str]) -> int:
    inventory, mode, token, release, chosen_text, *data_items = argv
    chosen = [n for n in chosen_text.split(",") if n]
    data: dict[str, Any] = {}
    for item in data_items:
        key, _, value = item.partition("=")
        data[key] = value
    with connected_partly(inventory, data) as reached:
        by_name = {h.name: h for h in reached.hosts}
        names = sorted(chosen or reached.names)
        for name in names:
            if name not in reached.names:
                known = ", ".join(reached.names) or "none"
                _out(f"UNKNOWN {name}\tnot a host of the inventory (its hosts: {known})")
                return 2
            if name in reached.unreachable:
                _out(f"UNREACHABLE {name}\t{reached.unreachable[name]}")
                return 4
        specs = {
            name: Spec.from_data(by_name[name].data, action="rollout", release_id=release)
            for name in names
        }
        if mode != "hold":
            _report_state(reached, names, specs, by_name)
            _out("DONE")
            return 0
        lease_s = min(spec.lock_lease_s for spec in specs.values())
        leases = FleetLeases(token, lease_s, lambda host, why: _out(f"LOST {host}\t{why}"))
        bounded = {name: BoundedRemote(by_name[name], leases.bound_s) for name in names}
        try:
            refused = _take_all([(name, bounded[name], specs[name]) for name in names], leases)
            if refused:
                return refused
            _report_state(reached, names, specs, bounded)
            _out("HELD")
            _wait_for_eof()
        finally:
            leases.release()
        _out("RELEASED")
        return 0


def _take_all(hosts: list[tuple[str, BoundedRemote, Spec]], leases: FleetLeases) -> int:
    """Every host's lock, in order, each renewed by LEASES from the moment it is taken; 0, or
    the exit code after REFUSED or UNREACHABLE (the locks taken are dropped)."""
    for name, remote, spec in hosts:
        taking = time.monotonic()
        held = HeldLock(name, remote.inner, spec, renewed_at=taking)
        try:
            acquire_lock(remote, spec, token=leases.token)
        except DeployFailed as exc:
            leases.release()
            _out(f"REFUSED {name}\t{exc}")
            return 3
        except Exception as exc:  # no answer within the bound: it may hold our lock now
            leases.release(also=[held])
            why = f"no answer within {leases.bound_s:.0f} s while taking its lock"
            _out(f"UNREACHABLE {name}\t{why} ({exc!r})")
            return 4
        leases.add(held)
    return 0


def _report_state(
    reached: Any, names: list[str], specs: dict[str, Spec], remotes: Mapping[str, Any]
) -> None:
    first = remotes[names[0]].data if names else {}
    _out("SETTINGS " + json.dumps({k: _get(first, k) for k in SETTINGS}))
    for name in names:
        _out("FACTS " + _facts(remotes[name], specs[name], reached.addresses[name]).to_json())


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RemoteError as exc:  # the inventory could not be loaded: its own message
        _out(f"UNKNOWN -\t{exc}")
        sys.exit(2)
    except Exception as exc:  # said on stdout, where the rollout reads
        _out(f"ERROR {json.dumps(f'{type(exc).__name__}: {exc}')}")
        sys.exit(1)
