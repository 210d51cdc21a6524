"""How a release goes live on one host, as a rollout's plan tells it before anything changes:
blue/green (two copies; the host keeps serving) or a one-copy restart (the host is out of
service from the stop until the new process is ready; drained from the load balancer first
when lb_drain is on), and how long it is expected to be out of service.

The host side is one read-only script per host (`method_script`): the model store's verified
files (the plan's fetch figures), the last start's measures (`Layout.last_start`, written by
the release gate: release, strategy, outage_s, start_s, at) and, on a blue/green host with a
live colour, the GPU memory reading of ai_deploy.host.gpu_memory. `parse_method_facts` turns
its output into data; `choose` is the pure decision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ai_deploy.host import gpu_memory
from ai_deploy.host.paths import COLOURS, Layout

BLUE_GREEN = "blue/green"
DRAIN_BLUE_GREEN = "drain + blue/green"
ONE_COPY = "one-copy restart"
DRAIN_ONE_COPY = "drain + one-copy restart"
REFUSED = "refused (two copies do not fit, gpu_memory_when_short='refuse')"
UNKNOWN_START = "unknown (no start measured yet)"


def method_script(
    layout: Layout, live: str | None, cgroup_root: str = gpu_memory.CGROUP_ROOT
) -> str:
    """The one read: verified model files, the last start, and (LIVE: blue/green's live colour)
    what the colours hold on the GPUs."""
    script = (
        f"echo '== blobs'; ls -1 {layout.model_blobs} 2>/dev/null || true\n"
        f"echo '== last-start'; cat {layout.last_start} 2>/dev/null; echo\n"
    )
    if live in COLOURS:
        units = {c: layout.colour_unit(c) for c in COLOURS}
        script += "echo '== gpu'\n" + gpu_memory.memory_script(units, cgroup_root)
    return script


@dataclass(frozen=True)
class MethodFacts:
    """What `method_script` found: the verified blobs (sha256), the last start (None: none
    recorded or unreadable) and the GPU's verdict on a second copy (None: not read)."""

    blobs: list[str]
    last_start: dict[str, Any] | None
    gpu: dict[str, Any] | None


def parse_method_facts(lines: list[str], live: str | None) -> MethodFacts:
    sections: dict[str, list[str]] = {"blobs": [], "last-start": [], "gpu": []}
    part = ""
    for line in lines:
        head = line.strip()
        if head in ("== blobs", "== last-start", "== gpu"):
            part = head[3:]
        elif part:
            sections[part].append(line)
    blobs = [
        n.strip()[: -len(".verified")] for n in sections["blobs"] if n.strip().endswith(".verified")
    ]
    return MethodFacts(blobs, _last_start("\n".join(sections["last-start"])), _gpu(sections, live))


def _last_start(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _gpu(sections: dict[str, list[str]], live: str | None) -> dict[str, Any] | None:
    if live not in COLOURS or not sections["gpu"]:
        return None
    reading = gpu_memory.parse_reading(sections["gpu"])
    idle = COLOURS[1 - COLOURS.index(live)]
    verdict = gpu_memory.fit(reading, live, idle, None)
    held = [(reading.use(live, g)[0], g.total) for g in reading.gpus]
    used = [(mib, total) for mib, total in held if mib]
    totals = [total for _, total in used or held]
    return {
        "fits": verdict.fits,
        "live_mib": sum(mib for mib, _ in used),
        "total_mib": sum(totals) if totals and None not in totals else None,
        "message": verdict.message,
    }


def start_seconds(last: dict[str, Any] | None) -> float | None:
    """The last start's duration: start_s, else its outage_s; None when neither was measured."""
    for key in ("start_s", "outage_s"):
        value = (last or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


@dataclass(frozen=True)
class Method:
    """NAME: how the release goes live there; OUT_OF_SERVICE: whether its step takes the host
    out of service; OUTAGE_S: the expected seconds out (None: unknown); GPU: the line that says
    why blue/green falls back ("" when it does not)."""

    name: str
    out_of_service: bool
    outage_s: float | None
    gpu: str = ""

    @property
    def outage(self) -> str:
        if not self.out_of_service:
            return "0 s"
        drain = " + the drain" if self.name.startswith("drain") else ""
        return (UNKNOWN_START if self.outage_s is None else f"~{self.outage_s:.0f} s") + drain


def choose(
    keeps_serving: bool,
    lb_drain: bool,
    gpu: dict[str, Any] | None,
    when_short: str,
    last_start: dict[str, Any] | None,
) -> Method:
    """The method for a host whose strategy KEEPS_SERVING (blue/green) or not, with LB_DRAIN,
    the GPU's verdict (`MethodFacts.gpu`), gpu_memory_when_short and the last start."""
    expected = start_seconds(last_start)
    one_copy = DRAIN_ONE_COPY if lb_drain else ONE_COPY
    if not keeps_serving:
        return Method(one_copy, True, expected)
    if gpu is None or gpu.get("fits") is not False:
        # Blue/green keeps serving; drained first all the same when lb_drain is on (out of
        # the load balancer for its drain and switch, not for a start).
        return Method(DRAIN_BLUE_GREEN if lb_drain else BLUE_GREEN, lb_drain, 0.0)
    total = gpu.get("total_mib")
    holds = f"live holds {gpu.get('live_mib')}" + (f" of {total} MiB" if total else " MiB")
    if when_short == "refuse":
        return Method(REFUSED, False, 0.0, f"GPU: {holds}; two copies do not fit: refused")
    outage = UNKNOWN_START if expected is None else f"~{expected:.0f} s"
    line = f"GPU: {holds}; two copies do not fit: one-copy restart, expected outage {outage}"
    return Method(one_copy, True, expected, line)
