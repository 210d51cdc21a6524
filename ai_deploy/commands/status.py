"""`ai-deploy status`: per host, the current release, kept releases, service, strategy, health,
lock, GPU and the last lines of revisions.log."""

from __future__ import annotations

import shlex

from ai_deploy.host import strategies
from ai_deploy.host.facts import AppTree, read_tree
from ai_deploy.host.gpu import parse_probe as parse_gpu_probe
from ai_deploy.host.gpu import probe_script as gpu_probe_script
from ai_deploy.host.paths import Layout
from ai_deploy.host.release.health import parse_probe, probe_script
from ai_deploy.host.release.lock import describe_lock
from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.inventory import connected


def layout_of(h: PyinfraRemote) -> Layout:
    d = h.data
    return Layout(d.app_root, d.app_name, d.app_log_dir)


def strategy_line(tree: AppTree, layout: Layout) -> str:
    for strategy in strategies.STRATEGIES.values():
        if strategy.is_steady(tree, layout):
            return f"{strategy.name} (live: {tree.live})" if tree.live else strategy.name
    active = sorted(tree.active_units())
    return f"none steady (active units: {', '.join(active) or 'none'})"


def lock_line(tree: AppTree) -> str:
    if tree.lock is None and tree.lock_raw is None:
        return "free"
    return f"held by {describe_lock(tree.lock)}"


def _show(h: PyinfraRemote) -> None:
    d, layout = h.data, layout_of(h)
    tree = read_tree(h, layout)
    props, code, body = parse_probe(
        h.run(probe_script(layout.service, d.app_port, d.health_path)).stdout
    )
    enabled = h.run(f"systemctl is-enabled {shlex.quote(layout.service)} 2>/dev/null || true")
    log = h.run(f"tail -n 5 {layout.revisions} 2>/dev/null || true").stdout
    print(f"{h.name} ({getattr(d, 'ssh_hostname', None) or h.name})")
    print(f"  current:   {tree.current or 'none'} (previous: {tree.previous or 'none'})")
    print(f"  releases:  {', '.join(tree.releases) or 'none'}")
    state = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"
    enabled_state = enabled.stdout[0] if enabled.stdout else "unknown"
    print(f"  service:   {state}, {enabled_state}, pid {props.get('MainPID', '?')}")
    print(f"  strategy:  {strategy_line(tree, layout)}")
    print(f"  health:    {f'{code} {body[:100]}' if code else f'no answer ({body[:80]})'}")
    print(f"  lock:      {lock_line(tree)}")
    report = parse_gpu_probe(h.run(gpu_probe_script(d.gpu_sysfs_pci)).stdout)
    if report.has_gpu:
        print(f"  gpu:       {report.summary()}")
    print("  revisions.log:")
    for line in log or ["(empty)"]:
        print(f"    {line}")


def show_status(inventory: str | None) -> int:
    with connected(inventory) as hosts:
        for h in hosts:
            _show(h)
    return 0
