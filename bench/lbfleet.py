"""A fleet behind HAProxy, rolled out with and without drain, through the load balancer.

`python -m bench.lbfleet [--quick] [--hosts 3,6] [--out DIR]`, as root, from the repository
root.

In one run it boots as many sandbox hosts as the largest fleet (the smaller fleet is the first
hosts of it, with an inventory of its own), sets the stand-in engine's start
(MODEL_LOAD_SECONDS in the kept .env), and for lb_drain=true then false, for each fleet size:
puts the base release on every host (unmeasured), measures one host's start
(`systemctl restart` to /health 200), then runs `ai-deploy deploy` of a release the hosts never
had, one host at a time under `deploy_strategy=restart`, while POSTs of /v1/completions and
token streams go through HAProxy (testkit.lb: checks on /lb-health with drain, on the app's
/health without). It reports failed requests, streams cut, the fewest hosts in service, p99
during the rollout against steady, and the wall time against (one host's start +
lb_drain_wait_s x 2) x hosts / floor, in DIR/lbfleet.md and DIR/lbfleet.json. The hosts and
the load balancer it started are gone on every exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ai_deploy.sandbox import hosts
from bench.fleet import Group
from bench.fleet_cli import REPO, run_cli
from bench.lbfleet_report import LbFleetResult, render_markdown, render_table, stream_wait_s
from bench.metrics import summarize
from bench.ours import setup_host
from bench.startup import guarded, header, remove_hosts, start
from testkit.lb import Backend, HealthCheck, haproxy
from testkit.lbrollout import Streams, rollout_under_traffic
from testkit.load import http_get
from testkit.remote import sudo
from testkit.variants import Variant, build

_T0 = time.monotonic()
BEFORE_S = 30.0  # steady traffic before the rollout (600 requests at 20/s: a steady p99)
AFTER_S = 5.0  # and after it


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def settings(args: argparse.Namespace, drain: bool) -> list[str]:
    """The deploy's --data for a rollout with or without drain."""
    common = ["deploy_strategy=restart", f"drain_timeout_s={int(args.stream_s * 2 + 30)}",
              f"rollout_max_unavailable={args.floor}"]  # fmt: skip
    if not drain:
        return [*common, "lb_drain=false"]
    return [*common, "lb_drain=true", f"lb_drain_wait_s={args.drain_wait:g}"]


# In production the deploy runs on a CI runner, not on the load balancer or the hosts; here all
# share 2 cores, so it runs at a lower CPU priority than they and the load do.
DEPLOY_NICE = 10


def deploy_argv(inventory: Path, artifact: Path, data: list[str], batch: str) -> list[str]:
    return [
        "nice", "-n", str(DEPLOY_NICE), str(Path(sys.executable).with_name("ai-deploy")),
        "deploy", "--artifact", str(artifact),
        "-i", str(inventory), "--no-gcp", "--health-interval", "1", "--health-attempts", "30",
        "--canary", "0", "--batch-size", batch, *(a for d in data for a in ("--data", d)),
    ]  # fmt: skip


def one_start_s(address: str, limit_s: float = 300.0) -> float:
    """Seconds from `systemctl restart ai-server` to the first /health 200 on ADDRESS."""
    began = time.monotonic()
    sudo(address, "systemctl restart ai-server")
    while time.monotonic() - began < limit_s:
        if http_get(address, 8000, "/health", 2.0).code == 200:
            return time.monotonic() - began
        time.sleep(0.1)
    raise RuntimeError(f"{address}: no /health 200 within {limit_s:.0f} s of a restart")


class LbFleetBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.started: list[str] = []
        self.variants: dict[str, Variant] = {}
        self.logs = args.out / "lbfleet-logs"

    def build_variants(self, labels: list[str]) -> None:
        for pad, label in enumerate(labels):
            self.variants[label] = build(self.workdir, label, pad)
            log(f"artifact {label}: {self.variants[label].path.name}")

    def boot(self, count: int) -> Group:
        booted, inventory = hosts.up(count=count, name=f"h25-lbf{os.getpid() % 100000}")
        self.started.extend(h.name for h in booted)
        fleet = Group(sorted(booted, key=lambda h: h.name), inventory)
        for h in fleet.hosts:
            setup_host(h.address, self.args.model_load)
        log(f"up: {', '.join(f'{h.name} {h.address}' for h in fleet.hosts)}")
        return fleet

    def first(self, fleet: Group, count: int) -> Group:
        """The first COUNT hosts of FLEET, with an inventory of their own beside its own."""
        if count == len(fleet.hosts):
            return fleet
        subset = fleet.hosts[:count]
        inventory = fleet.inventory.parent / f"first-{count}" / "sandbox.py"
        hosts.write_inventory(inventory, subset)
        shutil.copy(fleet.inventory.parent / "known_hosts", inventory.parent / "known_hosts")
        return Group(subset, inventory)

    def down(self) -> None:
        remove_hosts(self.started, log)

    def put(self, fleet: Group, label: str, drain: bool) -> None:
        """Unmeasured: LABEL on every host of FLEET at once, with drain's settings or not."""
        data = [*settings(self.args, drain), "rollout_max_unavailable=100%"]
        argv = deploy_argv(fleet.inventory, self.variants[label].path, data, "100%")
        why = f"put-{label}-{len(fleet.hosts)}-{'drain' if drain else 'nodrain'}"
        cmd = run_cli(argv, self.logs / f"{why}.log")
        serves = fleet.serving()
        if cmd.rc != 0 or set(serves.values()) != {label}:
            raise RuntimeError(f"could not put {label} (exit {cmd.rc}, {serves}; {why}.log)")

    def measure(self, fleet: Group, label: str, drain: bool) -> LbFleetResult:
        args = self.args
        r = LbFleetResult(len(fleet.hosts), drain, label, floor=args.floor)
        r.drain_wait_s = args.drain_wait if drain else 0.0
        self.put(fleet, "base", drain)
        r.start_s = one_start_s(fleet.hosts[0].address)
        per_host = r.start_s + 2 * r.drain_wait_s
        half = args.streams // 2
        streams = [
            Streams(1.0, half, args.stream_tokens, args.stream_interval),
            Streams(1.0 + per_host * 1.5, args.streams - half, args.stream_tokens,
                    args.stream_interval),
        ]  # fmt: skip
        path = "/lb-health" if drain else "/health"
        check = HealthCheck(path, 8000, args.check_interval, args.threshold)
        backends = [Backend(h.name, h.address) for h in fleet.hosts]
        argv = deploy_argv(fleet.inventory, self.variants[label].path, settings(args, drain), "1")
        with haproxy(backends, check) as lb:
            lb.wait_for([h.name for h in fleet.hosts], timeout=60)
            run = rollout_under_traffic(
                lb, argv, self.logs / f"{label}.log", rate=args.rate, timeout=args.timeout,
                streams=streams, before_s=BEFORE_S, after_s=AFTER_S, cwd=REPO,
            )  # fmt: skip
        records = run.traffic.records
        r.rc, r.wall_s, r.serves_after = run.rc, run.wall_s, fleet.serving()
        r.stream_wait_s = stream_wait_s(run.output)
        r.summary = summarize(
            records,
            steady=(0.0, run.started - 1e-6),
            deploy=(run.started, run.ended),
            end=run.ended + AFTER_S,
            interval=1 / args.rate,
        )
        r.streams, r.streams_cut = len(run.traffic.streams), len(run.traffic.cut)
        r.fewest_up = run.fewest_up_during
        return r


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.lbfleet", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 3 hosts only, a 3 s start, checks every 0.5 s, "
                   "lb_drain_wait_s 2, streams of 10 s")  # fmt: skip
    p.add_argument("--hosts", default="3,6", help="fleet sizes, comma-separated (default 3,6)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "latest",
                   help="writes lbfleet.md, lbfleet.json and lbfleet-logs/ there")  # fmt: skip
    p.add_argument("--rate", type=float, default=20.0, help="POSTs/s in all (default 20)")
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout s (default 10)")
    p.add_argument("--model-load", type=float, help="MODEL_LOAD_SECONDS (default 60)")
    p.add_argument("--check-interval", type=float,
                   help="HAProxy check interval s (default 5, a GCP health check's)")  # fmt: skip
    p.add_argument("--threshold", type=int, default=2, help="checks in a row (default 2)")
    p.add_argument("--drain-wait", type=float, help="lb_drain_wait_s (default 12, its own)")
    p.add_argument("--streams", type=int, default=4, help="streams per rollout (default 4)")
    p.add_argument("--stream-s", type=float, help="each stream's length s (default 60)")
    p.add_argument("--floor", type=int, default=1, help="rollout_max_unavailable (default 1)")
    args = p.parse_args(argv)
    quick = args.quick
    args.sizes = [3] if quick else sorted({int(n) for n in args.hosts.split(",")})
    if args.model_load is None:
        args.model_load = 3.0 if quick else 60.0
    if args.check_interval is None:
        args.check_interval = 0.5 if quick else 5.0
    if args.drain_wait is None:
        args.drain_wait = 2.0 if quick else 12.0
    if args.stream_s is None:
        args.stream_s = 10.0 if quick else 60.0
    args.stream_interval = 0.5
    args.stream_tokens = max(1, round(args.stream_s / args.stream_interval))
    if args.drain_wait < args.check_interval * args.threshold:
        p.error(
            f"--drain-wait {args.drain_wait:g} is shorter than HAProxy's detection "
            f"({args.check_interval:g} s x {args.threshold}): raise it"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if not start("systemd-nspawn sandbox hosts and HAProxy", drop_ci_env=True):
        return 2
    head = header("python -m bench.lbfleet", raw)
    # Every drained rollout first: a host where lb_drain was turned off is never turned on
    # again (that change, made by a deploy, fails on a host whose app holds app_port).
    runs = [(n, drain) for drain in (True, False) for n in args.sizes]
    labels = {(n, d): f"rel-{n}-{'drain' if d else 'nodrain'}" for n, d in runs}
    results: list[LbFleetResult] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ai-deploy-bench-lbfleet-") as tmp:
        bench = LbFleetBench(args, Path(tmp))

        def body() -> None:
            bench.build_variants(["base", *labels.values()])
            fleet = bench.boot(max(args.sizes))
            for n, drain in runs:
                label = labels[(n, drain)]
                log(f"--- {n} hosts, lb_drain={str(drain).lower()}: {label}")
                try:
                    results.append(bench.measure(bench.first(fleet, n), label, drain))
                except RuntimeError as exc:  # its set-up failed: nothing measured
                    results.append(LbFleetResult(n, drain, label, error=str(exc)))
                log(render_table(results[-1:]).splitlines()[-1])

        try:
            rc = guarded(body, notes, log)
        finally:
            bench.down()
    info = [
        ("Command", f"`{head.command}` (as root, from the repository root)"),
        ("Date", f"{head.date}; runtime {(time.monotonic() - _T0) / 60:.1f} min"),
        ("Machine", f"{os.cpu_count()} CPUs, load average {head.load_avg} at start; the "
         "hosts, HAProxy and the load share them; "
         f"{len(head.others)} other sandbox host(s) running"),
        ("Hosts", f"systemd-nspawn sandbox guests, fleets of {', '.join(map(str, args.sizes))}; "
         f"deploy_strategy=restart (one copy), MODEL_LOAD_SECONDS={args.model_load:g}"),
        ("Load balancer", f"HAProxy (Debian's), checks every {args.check_interval:g} s, "
         f"{args.threshold} in a row, no retry or redispatch; /lb-health with drain "
         f"(lb_drain_wait_s={args.drain_wait:g}), the app's /health without"),
        ("Load", f"{args.rate:g} POST /v1/completions per second through HAProxy, a new "
         f"connection each, client timeout {args.timeout:g} s, {BEFORE_S:g} s before the "
         f"rollout and {AFTER_S:g} s after; {args.streams} streams of {args.stream_s:g} s "
         "during it (half at its start, half about 1.5 hosts in)"),
        ("Rollout", "`ai-deploy deploy --no-gcp -i INVENTORY --canary 0 --batch-size 1 "
         f"--data rollout_max_unavailable={args.floor}` of a release the hosts never had, at "
         f"nice {DEPLOY_NICE} (in production it runs on a CI runner, not beside the load "
         "balancer and the hosts; here they share 2 cores)"),
    ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lbfleet.md").write_text(render_markdown(info, results, notes))
    doc = {"info": dict(info), "results": [r.as_dict() for r in results], "notes": notes}
    (args.out / "lbfleet.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(render_table(results), flush=True)
    log(f"wrote {args.out / 'lbfleet.md'} and lbfleet.json")
    return rc


if __name__ == "__main__":
    sys.exit(main())
