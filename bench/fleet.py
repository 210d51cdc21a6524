"""A fleet under load: `python -m bench.fleet [--quick] [--out DIR]` as root, from the
repository root.

In one run it boots 5 sandbox hosts, 1 alone and 4 as a fleet (each set with the inventory its
own `hosts.up` writes), prepares them as bench.run does (.env with MODEL_LOAD_SECONDS, strategy
socket, a first deploy of the base release, unmeasured), then measures `ai-deploy deploy`
rollouts under a steady load sent round-robin to the target's hosts: (a) the single host,
(b) the 4 in one batch, (c) a canary then batches of 2, (d) a release that refuses to start on
the third host, so every switched host goes back. Hosts return to the base release between
scenarios (unmeasured). The hosts it started are removed by name on every exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.sandbox import hosts
from bench import ours
from bench.fleet_cli import DEPLOY_LIMIT_S, REPO, STRATEGY, deploy_argv, run_cli
from bench.fleet_load import RoundRobinLoad, failed_by_host, variant_of
from bench.fleet_report import FleetResult, acceptance, render_markdown, render_table
from bench.metrics import summarize
from bench.scenarios import DeployError, check_host
from bench.startup import guarded, header, remove_hosts, start
from testkit.load import OK, http_get
from testkit.remote import sudo
from testkit.variants import Variant, build

REFUSE_FILE = "/etc/ai-server-refuses-this-release"  # the "refuses" release will not start there
PUT = ("--canary", "0", "--batch-size", "100%")  # unmeasured: base back on every host at once
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class FleetScenario:
    key: str
    title: str
    fleet: bool  # the 4 hosts; else the single one
    rollout: tuple[str, ...]
    variant: str
    expect_rc: int = 0
    refuse_on: int = 0  # the fleet's host (1-based, by name) where the release will not start
    quick: bool = True

    @property
    def expect_after(self) -> str:
        return self.variant if self.expect_rc == 0 else "base"


SCENARIOS = (
    FleetScenario("a", "1 host (a 1-host fleet)", False, ("--canary", "0"), "rel-a"),
    FleetScenario("b", "4 hosts, one batch", True, PUT, "rel-b"),
    FleetScenario(
        "c",
        "4 hosts, canary then batches of 2",
        True,
        ("--canary", "1", "--batch-size", "2"),
        "rel-c",
        quick=False,
    ),
    FleetScenario(
        "d",
        "4 hosts, release failing on host 3: all switched back",
        True,
        ("--canary", "1", "--batch-size", "1"),
        "refuses",
        expect_rc=15,
        refuse_on=3,
    ),
)
# Each measured rollout puts a release the hosts never had (same uv.lock), as (a) does.
VARIANTS = ("base", "rel-a", "rel-b", "rel-c", "refuses")


def refuse_where_flagged(main_py: str) -> str:
    """main.py that exits at import on a host where REFUSE_FILE exists."""
    anchor = "from fastapi import FastAPI\n"
    if main_py.count(anchor) != 1:
        raise RuntimeError("examples/ai-server/main.py changed: its FastAPI import not found")
    check = (
        f"\nif Path({REFUSE_FILE!r}).exists():\n"
        f"    raise SystemExit('bench: this host refuses the release ({REFUSE_FILE})')\n"
    )
    return main_py.replace(anchor, anchor + check, 1)


@dataclass
class Group:
    hosts: list[hosts.Host]
    inventory: Path

    def serving(self) -> dict[str, str]:
        """Host name -> the variant its /predict answers with now ("down": no answer)."""
        found = {}
        for h in self.hosts:
            answer = http_get(h.address, 8000, "/predict?q=bench-check", 10.0)
            found[h.name] = (variant_of(answer.body) if answer.status == OK else None) or "down"
        return found

    def check(self) -> None:
        for h in self.hosts:  # the load must never reach an address reused by another host
            check_host(h.name, h.address)


class FleetBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.started: list[str] = []
        self.variants: dict[str, Variant] = {}
        self.groups: dict[bool, Group] = {}

    def build_variants(self) -> None:
        for pad, label in enumerate(VARIANTS):
            patch = refuse_where_flagged if label == "refuses" else None
            self.variants[label] = build(self.workdir, label, pad, patch=patch)
            log(f"artifact {label}: {self.variants[label].path.name}")

    def boot(self, count: int, name: str) -> Group:
        booted, inventory = hosts.up(count=count, name=name)
        self.started.extend(h.name for h in booted)
        group = Group(sorted(booted, key=lambda h: h.name), inventory)
        for h in group.hosts:
            ours.setup_host(h.address, self.args.model_load)
        log(f"up: {', '.join(f'{h.name} {h.address}' for h in group.hosts)} ({inventory})")
        return group

    def prepare(self) -> None:
        prefix = f"bf{os.getpid() % 100000}"
        self.groups[False] = self.boot(1, f"{prefix}-one")
        self.groups[True] = self.boot(4, f"{prefix}-fleet")
        for fleet, group in self.groups.items():
            log(f"first deploy of base on {len(group.hosts)} host(s) (set-up, unmeasured)")
            self.put(group, "base", f"setup-{'fleet' if fleet else 'one'}")

    def down(self) -> None:
        remove_hosts(self.started, log)

    def put(self, group: Group, label: str, why: str) -> None:
        """Unmeasured: LABEL served by every host of GROUP, or DeployError."""
        argv = deploy_argv(group.inventory, self.variants[label].path, PUT)
        cmd = run_cli(argv, self.args.out / "logs" / f"{why}.log")
        serves = group.serving()
        if cmd.rc != 0 or set(serves.values()) != {label}:
            raise DeployError(
                f"not measured: could not put {label} on every host (exit {cmd.rc}, serving "
                f"{serves}; logs/{why}.log)"
            )

    def measure(self, sc: FleetScenario) -> FleetResult:
        group, args = self.groups[sc.fleet], self.args
        r = FleetResult(
            sc.key, sc.title, len(group.hosts), " ".join(sc.rollout), sc.expect_rc, sc.expect_after
        )
        group.check()
        if set(group.serving().values()) != {"base"}:
            self.put(group, "base", f"reset-before-{sc.key}")
        refusing = group.hosts[sc.refuse_on - 1] if sc.refuse_on else None
        if refusing:
            sudo(refusing.address, f"touch {REFUSE_FILE}")
        gen = RoundRobinLoad(
            [h.address for h in group.hosts],
            rate=args.rate,
            timeout=args.timeout,
            max_duration=args.steady + DEPLOY_LIMIT_S + args.tail + 30,
        ).start()
        try:
            time.sleep(args.steady)
            artifact = self.variants[sc.variant].path
            cmd = run_cli(
                deploy_argv(group.inventory, artifact, sc.rollout),
                args.out / "logs" / f"{sc.key}.log",
                echo=lambda line: log(f"    {line}"),
            )
            time.sleep(args.tail)
            end = gen.now()
        finally:
            records = gen.stop()
            if refusing:
                sudo(refusing.address, f"rm -f {REFUSE_FILE}", check=False)
        group.check()
        start, stop = cmd.started - gen.t0, cmd.ended - gen.t0
        r.rc, r.wall_s, r.serves_after = cmd.rc, cmd.wall_s, group.serving()
        r.summary = summarize(
            records,
            steady=(0.0, start - 1e-6),
            deploy=(start, stop),
            end=end,
            interval=1 / args.rate,
        )
        r.failed_by_host = failed_by_host(records, [h.name for h in group.hosts], start)
        r.steps = [line.strip() for _, line in cmd.lines if line.startswith("== ")]
        return r


def describe(r: FleetResult) -> str:
    if r.summary is None:
        return r.error or "not measured"
    s = r.summary
    return (
        f"exit {r.rc} (expected {r.expect_rc}), wall {r.wall_s:.1f} s, failed {s.failed}/"
        f"{s.requests}, p99 steady/rollout {s.steady_p99_ms or 0:.0f}/{s.deploy_p99_ms or 0:.0f}"
        f" ms, serves after: {r.serves_after}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: (a), (b), (d); 3 s windows")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "latest" / "fleet")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s in all (default 20)")
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout s (default 10)")
    p.add_argument("--model-load", type=float, default=3.0, help="MODEL_LOAD_SECONDS (3)")
    args = p.parse_args(argv)
    args.steady = args.tail = 3.0 if args.quick else 5.0
    args.scenarios = [s for s in SCENARIOS if s.quick or not args.quick]
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if not start("systemd-nspawn sandbox hosts", drop_ci_env=True):
        return 2
    head = header("python -m bench.fleet", raw)
    results: list[FleetResult] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ai-deploy-bench-fleet-") as tmp:
        bench = FleetBench(args, Path(tmp))

        def body() -> None:
            bench.build_variants()
            bench.prepare()
            for sc in args.scenarios:
                log(f"--- ({sc.key}) {sc.title}: ai-deploy deploy {' '.join(sc.rollout)}")
                try:
                    results.append(bench.measure(sc))
                except DeployError as exc:  # the reset before it failed: nothing measured
                    results.append(
                        FleetResult(
                            sc.key,
                            sc.title,
                            0,
                            " ".join(sc.rollout),
                            sc.expect_rc,
                            sc.expect_after,
                            error=str(exc),
                        )
                    )
                log(f"({sc.key}): {describe(results[-1])}")

        try:
            rc = guarded(body, notes, log)
        finally:
            bench.down()
    info = [
        ("Command", f"`{head.command}` (as root, from the repository root)"),
        ("Date", f"{head.date}; runtime {(time.monotonic() - _T0) / 60:.1f} min"),
        ("Machine", f"{os.cpu_count()} CPUs, load average {head.load_avg} at start; the 5 hosts "
         f"and the load generator share them; {len(head.others)} other sandbox host(s) running"),
        ("Hosts", "systemd-nspawn sandbox guests; (a) 1 host, (b)-(d) 4 hosts (one inventory "
         f"each); strategy {STRATEGY}, MODEL_LOAD_SECONDS={args.model_load:g}"),
        ("Load", f"{args.rate:g} requests/s in all, GET /predict (~50 ms of work), a new "
         "connection each, round-robin over the target's hosts; client timeout "
         f"{args.timeout:g} s; {args.steady:g} s before the rollout, {args.tail:g} s after"),
        ("Rollout", "`ai-deploy deploy --no-gcp -i INVENTORY --health-interval 1 "
         "--health-attempts 20 --data deploy_strategy=socket` + the options shown"),
    ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(render_markdown(info, results, notes))
    doc = {
        "info": dict(info),
        "scenarios": [r.as_dict() for r in results],
        "acceptance": vars(acceptance(results)),
        "notes": notes,
    }
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(render_table(results) + "\n" + acceptance(results).text, flush=True)
    log(f"wrote {args.out / 'results.md'} and results.json")
    return rc


if __name__ == "__main__":
    sys.exit(main())
