"""`ai-deploy status [--json]`: per host, the current release, kept releases, service, strategy,
health (with when the app loaded), with lb_drain the load-balancer state as the host answers
lb_health_path (in service / drained / not ready), lock, GPU, the cache directory's size and the
last lines of revisions.log. Every host of the inventory is shown, an unreachable one with why;
the exit status is 1 when any host is unreachable or not healthy (health not 200, or its service
not active)."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import TYPE_CHECKING, Any

from ai_deploy.commands.options import add_inventory
from ai_deploy.commands.sizes import human_size
from ai_deploy.commands.when import when_text
from ai_deploy.host.cache import CacheState, parse_state, state_script
from ai_deploy.host.gpu import parse_probe as parse_gpu_probe
from ai_deploy.host.gpu import probe_script as gpu_probe_script
from ai_deploy.host.lbdrain import lb_health
from ai_deploy.host.paths import Layout
from ai_deploy.host.release.health import parse_probe, probe_script
from ai_deploy.host.release.lock import describe_lock
from ai_deploy.host.release.models import models_script, parse_models
from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.host.revisions import revisions_script
from ai_deploy.host.safetext import safe_text
from ai_deploy.host.settings import Spec
from ai_deploy.inventory import connected_partly

if TYPE_CHECKING:
    from ai_deploy.host.facts import AppTree

# ai_deploy.host.facts and .strategies load pyinfra: imported where used, so that building the
# command line parser (every verb's module is imported for it) stays quick.


def layout_of(h: PyinfraRemote) -> Layout:
    return Layout.from_data(h.data)


def strategy_line(tree: AppTree, layout: Layout) -> str:
    from ai_deploy.host import strategies

    for strategy in strategies.STRATEGIES.values():
        if strategy.is_steady(tree, layout):
            return f"{strategy.name} (live: {tree.live})" if tree.live else strategy.name
    active = sorted(tree.active_units())
    return f"none steady (active units: {', '.join(active) or 'none'})"


def lock_line(tree: AppTree) -> str:
    if tree.lock is None and tree.lock_raw is None:
        return "free"
    return f"held by {describe_lock(tree.lock)}"


def cache_line(cache: CacheState) -> str:
    if not cache.present:
        return f"{cache.path}: not there yet (the next deploy makes it)"
    return (
        f"{cache.path}, {human_size(cache.size_bytes)} "
        f"({cache.owner}:{cache.group}, mode {cache.mode})"
    )


def health_fields(code: int, body: str) -> dict[str, Any]:
    """The health answer as data; `loaded_at` (an epoch in the body) when the app gives one."""
    fields: dict[str, Any] = {"code": code, "body": body}
    try:
        parsed = json.loads(body) if code else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("loaded_at"), (int, float)):
        fields["loaded_at"] = float(parsed["loaded_at"])
    return fields


def is_healthy(report: dict[str, Any]) -> bool:
    """Reached, health answered 200 and the service is active."""
    return (
        report.get("reachable", False)
        and report["health"]["code"] == 200
        and report["service"]["active"] == "active"
    )


def lb_report(h: PyinfraRemote) -> dict[str, Any] | None:
    """With lb_drain: the load-balancer state as the host answers lb_health_path (in service,
    drained, not ready) and where it is answered; None without lb_drain."""
    spec = Spec.from_data(h.data)
    if not spec.lb_drain:
        return None
    code, state = lb_health(h, spec)
    return {"state": state, "code": code, "path": spec.lb_health_path, "port": spec.lb_health_port}


def host_report(h: PyinfraRemote) -> dict[str, Any]:
    """What `status` says about one reachable host, as data."""
    d, layout = h.data, layout_of(h)
    from ai_deploy.host.facts import read_tree

    tree = read_tree(h, layout)
    # Blue/green serves from the live colour's unit; the health URL is nginx's, on app_port.
    unit = layout.colour_unit(tree.live) if tree.live and tree.nginx_site else layout.service
    props, code, body = parse_probe(h.run(probe_script(unit, d.app_port, d.health_path)).stdout)
    enabled = h.run(f"systemctl is-enabled {shlex.quote(unit)} 2>/dev/null || true").stdout
    log = h.run(revisions_script(layout, 5)).stdout
    gpu = parse_gpu_probe(h.run(gpu_probe_script(d.gpu_sysfs_pci)).stdout)
    report: dict[str, Any] = {
        "host": h.name,
        "address": d.get("ssh_hostname") or h.name,
        "reachable": True,
        "current": tree.current,
        "previous": tree.previous,
        "releases": tree.releases,
        "service": {
            "unit": unit,
            "active": props.get("ActiveState", "unknown"),
            "sub": props.get("SubState", "unknown"),
            "enabled": enabled[0] if enabled else "unknown",
            "pid": int(props["MainPID"]) if props.get("MainPID", "").isdigit() else None,
        },
        "strategy": strategy_line(tree, layout),
        "health": health_fields(code, body),
        "lock": tree.lock if tree.lock is not None else tree.lock_raw,
        "lock_line": lock_line(tree),
        "gpu": gpu.summary() if gpu.has_gpu else None,
        "models": list(parse_models(h.run(models_script(layout)).stdout).get(tree.current, ())),
        "cache": parse_state(layout, h.run(state_script(layout)).stdout).to_dict(),
        "revisions": log,
        "load_balancer": lb_report(h),
    }
    report["healthy"] = is_healthy(report)
    return report


def unreachable_report(name: str, address: str, reason: str) -> dict[str, Any]:
    return {
        "host": name,
        "address": address,
        "reachable": False,
        "healthy": False,
        "error": f"unreachable: {reason}",
    }


def render(report: dict[str, Any], now: float | None = None) -> list[str]:
    """REPORT as the lines `status` prints."""
    verdict = "healthy" if report["healthy"] else "NOT HEALTHY"
    if not report["reachable"]:
        verdict = "UNREACHABLE"
    lines = [f"{report['host']} ({report['address']}): {verdict}"]
    if not report["reachable"]:
        return [*lines, f"  {report['error']}"]
    svc, health = report["service"], report["health"]
    lines += [
        f"  current:   {report['current'] or 'none'} (previous: {report['previous'] or 'none'})",
        f"  releases:  {', '.join(report['releases']) or 'none'}",
        f"  service:   {svc['unit']} {svc['active']}/{svc['sub']}, {svc['enabled']}, "
        f"pid {svc['pid'] if svc['pid'] is not None else '?'}",
        f"  strategy:  {report['strategy']}",
        "  health:    "
        + (f"{health['code']} {health['body'][:100]}" if health["code"] else "no answer")
        + ("" if health["code"] else f" ({health['body'][:80]})"),
    ]
    if "loaded_at" in health:
        lines.append(f"  loaded:    {when_text(health['loaded_at'], now)}")
    lb = report.get("load_balancer")
    if lb:
        answer = lb["code"] or "no answer"
        lines.append(f"  lb:        {lb['state']} ({lb['path']} on port {lb['port']}: {answer})")
    lines.append(f"  lock:      {report['lock_line']}")
    if report["gpu"]:
        lines.append(f"  gpu:       {report['gpu']}")
    for m in report.get("models") or []:
        state = "verified" if m["verified"] else "NOT verified"
        lines.append(f"  model:     {m['name']} {m['version']}, {m['size_bytes']} bytes, {state}")
    if report.get("cache"):
        lines.append(f"  cache:     {cache_line(CacheState(**report['cache']))}")
    lines.append("  revisions.log:")
    lines += [f"    {line}" for line in report["revisions"] or ["(empty)"]]
    return lines


def show_status(inventory: str | None, as_json: bool = False) -> int:
    reports: list[dict[str, Any]] = []
    with connected_partly(inventory) as reached:
        by_name = {h.name: h for h in reached.hosts}
        for name in reached.names:
            address = reached.addresses[name]
            if name in by_name:
                report = host_report(by_name[name])
            else:
                report = unreachable_report(name, address, reached.unreachable[name])
            reports.append(report)
            if not as_json:
                print(safe_text("\n".join(render(report))), flush=True)
    if as_json:
        print(json.dumps(reports, indent=2))
    return 0 if all(r["healthy"] for r in reports) else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "status",
        help="per host: current release, kept releases, service, health, load-balancer state "
        "(lb_drain), lock, cache size, log; "
        "exit 1 when a host is unreachable or not healthy",
    )
    add_inventory(parser)
    parser.add_argument("--json", action="store_true", help="a JSON list, one object per host")
    parser.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return show_status(args.inventory, args.json)
