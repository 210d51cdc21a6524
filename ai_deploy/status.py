"""`ai-deploy status` and `ai-deploy lock`: what runs where, and the deploy lock on each host."""

from __future__ import annotations

import json
import shlex
import socket
import time

from ai_deploy.facts import MARK, AppTree, parse_tree, tree_script
from ai_deploy.gate import LOCK_DIR, PROBE, Spec, describe_lock, lock_is_stale, parse_probe
from ai_deploy.gpu import parse_probe as parse_gpu_probe
from ai_deploy.gpu import probe_script
from ai_deploy.remote import HostRun, connected


def _collect(h: HostRun) -> tuple[AppTree, dict[str, str], int, str, str, list[str]]:
    d = h.data
    service = f"{d.app_name}.service"
    _, out, _ = h.run(tree_script(d.app_root, service))
    tree = parse_tree(out[out.index(MARK) + 1 :] if MARK in out else out)
    _, probe, _ = h.run(
        PROBE.format(service=shlex.quote(service), port=d.app_port, path=d.health_path)
    )
    props, code, body = parse_probe(probe)
    _, enabled, _ = h.run(f"systemctl is-enabled {shlex.quote(service)} 2>/dev/null || true")
    _, log, _ = h.run(f"tail -n 5 {shlex.quote(d.app_root)}/revisions.log 2>/dev/null || true")
    return tree, props, code, body, (enabled[0] if enabled else "unknown"), log


def strategy_line(tree: AppTree, service: str) -> str:
    for strategy in ("socket", "restart", "bluegreen"):
        if tree.runs_strategy(strategy, service):
            return f"{strategy} (live: {tree.live})" if strategy == "bluegreen" else strategy
    active = sorted(u for u, state in tree.units.items() if state == "active")
    return f"none steady (active units: {', '.join(active) or 'none'})"


def lock_line(tree: AppTree) -> str:
    if tree.lock is None and tree.lock_raw is None:
        return "free"
    return f"held by {describe_lock(tree.lock)}"


def show_status(inventory: str | None) -> int:
    with connected(inventory) as hosts:
        for h in hosts:
            tree, props, code, body, enabled, log = _collect(h)
            address = h.data.ssh_hostname or h.name
            print(f"{h.name} ({address})")
            print(f"  current:   {tree.current or 'none'} (previous: {tree.previous or 'none'})")
            print(f"  releases:  {', '.join(tree.releases) or 'none'}")
            state = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"
            print(f"  service:   {state}, {enabled}, pid {props.get('MainPID', '?')}")
            print(f"  strategy:  {strategy_line(tree, f'{h.data.app_name}.service')}")
            health = f"{code} {body[:100]}" if code else f"no answer ({body[:80]})"
            print(f"  health:    {health}")
            print(f"  lock:      {lock_line(tree)}")
            _, gpu_out, _ = h.run(probe_script(h.data.gpu_sysfs_pci))
            report = parse_gpu_probe(gpu_out)
            if report.has_gpu:
                print(f"  gpu:       {report.summary()}")
            print("  revisions.log:")
            for line in log or ["(empty)"]:
                print(f"    {line}")
    return 0


def lock_command(inventory: str | None, action: str, force: bool = False) -> int:
    """`lock status` shows each host's lock; `lock release` removes a stale one (or any, forced)."""
    rc = 0
    with connected(inventory) as hosts:
        for h in hosts:
            d = h.data
            _, out, _ = h.run(tree_script(d.app_root, f"{d.app_name}.service"))
            tree = parse_tree(out[out.index(MARK) + 1 :] if MARK in out else out)
            print(f"{h.name}: {lock_line(tree)}")
            if action != "release" or (tree.lock is None and tree.lock_raw is None):
                continue
            spec = Spec(
                app_root=d.app_root,
                service="",
                action="",
                release_id="",
                port=0,
                lock_stale_s=float(d.lock_stale_s),
                deployer=socket.gethostname(),
            )
            stale = lock_is_stale(tree.lock, spec, time.time())
            if not stale and not force:
                print(
                    f"{h.name}: the holder may still be running; release anyway with --force "
                    "once you are sure it is gone"
                )
                rc = 1
                continue
            lock = f"{shlex.quote(d.app_root)}/{LOCK_DIR}"
            ok, _, err = h.run(f"rm -rf {lock}")
            if not ok:
                print(f"{h.name}: could not remove the lock: {' '.join(err)}")
                rc = 1
                continue
            reason = stale or "forced"
            print(f"{h.name}: lock released ({reason})")
            info = json.dumps(tree.lock) if tree.lock else tree.lock_raw
            h.run(
                f"printf '%s\\n' {shlex.quote(_audit_line(reason, info))} "
                f">> {shlex.quote(d.app_root)}/revisions.log"
            )
    return rc


def _audit_line(reason: str, info: str | None) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{stamp} lock-release - ok by={socket.gethostname()} reason={reason!r} holder={info}"
