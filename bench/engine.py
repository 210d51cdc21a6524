"""The stand-in engine under deploys: `python -m bench.engine [--start-s 30] [--rounds 2]
[--stream-s 120] [--out DIR]` as root, from the repository root.

In one run, on one sandbox host, the example app's stand-in engine (engine.py) starts in about
START_S seconds (weights read from a model file fetched by the deploy, sized so the disk takes a
sixth of it; the model's load; a compile of half of it when its cache is cold; a warm-up). Under
POST /v1/completions at 20 req/s (client timeout 10 s) it measures our deploy (pyinfra) of a new
release: (1) per strategy (restart, socket, bluegreen) with 4 long streams open, the failed
requests, streams cut and p99 during the deploy against steady; (2) a STREAM_S-second stream
open when the release goes live: blue/green, socket with drain_mode=wait, socket with
drain_mode=cut; (3) ROUNDS pairs of socket deploys, the one-copy outage without preparation
(page_cache_warm=false, the model files' pages dropped and the compile cache removed first) and
with it (the defaults; the pages dropped too, so the deploy's own preparation brings them back).
Each strategy is put on the host by an unmeasured deploy first. The host is removed on every exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.image import SandboxError
from bench import engine_host, ours
from bench.engine_load import CompletionsLoad, open_streams
from bench.engine_report import (
    DRAIN_WORDS,
    PREP_WORDS,
    Round,
    no_answer_s,
    render_markdown,
    said_lines,
    stream_verdict,
)
from bench.fleet_cli import DEPLOY_LIMIT_S
from bench.metrics import summarize
from bench.models_host import ModelServerHost, Served, build_release
from bench.proc import CmdResult
from bench.scenarios import DeployError, check_host
from bench.startup import machine_now, run_guarded, start
from testkit.variants import Variant

REPO = Path(__file__).resolve().parents[1]
DATA = ("models_allow_http=true",)  # every deploy: the model file comes from the host's server
FILE = "bench/engine-weights.bin"
STREAMS = 4
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def preparation_built() -> bool:
    """Whether this checkout's deploy warms the page cache (group_data has page_cache_warm)."""
    return ours.group_data_value("page_cache_warm") is not None


def plan(rounds: int) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(key, kind, strategy, --data) of every measured deploy, in order."""
    without = ("page_cache_warm=false",) if preparation_built() else ()
    steps = [
        ("restart", "strategy", "restart", ()),
        ("socket", "strategy", "socket", ()),
        ("bluegreen", "strategy", "bluegreen", ()),
        ("stream-bluegreen", "stream", "bluegreen", ()),
        ("stream-socket-wait", "stream", "socket", ("drain_mode=wait",)),
        ("stream-socket-cut", "stream", "socket", ("drain_mode=cut",)),
    ]
    for i in range(1, rounds + 1):
        steps += [
            (f"without-{i}", "without", "socket", without),
            (f"with-{i}", "with", "socket", ()),
        ]
    return steps


class EngineBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.host: hosts.Host | None = None
        self.inventory: Path | None = None
        self.served: Served | None = None
        self.reads: tuple[float, float] | None = None
        self.variants: dict[str, Variant] = {}
        self.live: tuple[str, str] = ("", "")  # (variant label, strategy) the host serves
        self.rounds: list[Round] = []

    @property
    def address(self) -> str:
        assert self.host is not None
        return self.host.address

    def boot(self) -> None:
        booted, inventory = hosts.up(count=1, name=f"b24-eng{os.getpid() % 100000}")
        self.host, self.inventory = booted[0], inventory
        log(f"up: {self.host.name} {self.host.address} ({inventory})")
        engine_host.write_env(self.address, engine_host.engine_env(self.args.start_s))
        server = ModelServerHost(self.address)
        server.start_server()
        log(f"writing {self.args.model_mib} MiB of model file on the host")
        self.served = server.make_file(FILE, self.args.model_mib)
        self.reads = engine_host.read_figures(self.address, FILE)
        log(f"model file: {self.served.size} bytes; read cold {self.reads[0]:.2f} s, warm "
            f"{self.reads[1]:.2f} s")  # fmt: skip

    def down(self) -> None:
        if self.host is None:
            return
        try:
            hosts.down([self.host.name])
            log(f"removed host {self.host.name}")
        except SandboxError as exc:  # removed from outside already
            log(f"host {self.host.name}: {exc}")
        self.host = None

    def build(self, labels: list[str]) -> None:
        assert self.served is not None
        for pad, label in enumerate(labels):
            self.variants[label] = build_release(self.workdir, label, pad, self.served.manifest())
        log(f"built {len(labels)} releases")

    def deploy(self, label: str, strategy: str, data: tuple[str, ...], why: str) -> CmdResult:
        assert self.inventory is not None
        check_host(self.host.name if self.host else "?", self.address)
        variant = self.variants[label]
        cmd = ours.run(
            self.inventory,
            strategy,
            f"artifact={variant.path}",
            *DATA,
            *data,
            timeout=DEPLOY_LIMIT_S,
            echo=lambda line: (
                log(f"    {line}") if said_lines(line, DRAIN_WORDS + PREP_WORDS) else None
            ),
        )
        logs = self.args.out / "engine-logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{why}.log").write_text(" ".join(map(shlex.quote, cmd.argv)) + "\n\n" + cmd.output)
        log(f"{why}: exit {cmd.rc}, {cmd.wall_s:.1f} s")
        if cmd.rc == 0:
            self.live = (label, strategy)
        return cmd

    def put(self, label: str, strategy: str) -> None:
        """Unmeasured: LABEL served under STRATEGY, or DeployError."""
        if self.live == (label, strategy):
            return
        if self.deploy(label, strategy, (), f"put-{label}-{strategy}").rc != 0:
            raise DeployError(f"not measured: could not put {label} under {strategy}")

    def measure(self, key: str, kind: str, strategy: str, data: tuple[str, ...]) -> Round:
        r = Round(key, kind, strategy, data, self.variants[key].release_id)
        self.put(self.live[0], strategy)
        if kind in ("with", "without"):
            engine_host.unprepare(self.address, compile_cache=kind == "without")
        cmd = self._under_stream(r) if kind == "stream" else self._under_load(r)
        r.rc, r.wall_s, r.drained = cmd.rc, cmd.wall_s, said_lines(cmd.output)
        r.prepared = said_lines(cmd.output, PREP_WORDS)
        r.host_outage_s = engine_host.recorded_outage(self.address, r.release)
        r.start = engine_host.last_start(self.address)
        return r

    def _under_stream(self, r: Round) -> CmdResult:
        """The deploy once one stream of --stream-s has its first token, no load beside it (so
        the connections the deploy counts are the stream's alone); the stream waited for."""
        seconds = self.args.stream_s
        streams = open_streams(self.address, 1, seconds=seconds, timeout=self.args.timeout)
        cmd = self.deploy(r.key, r.strategy, r.data, r.key)
        r.streams = [s.join(seconds + 60) for s in streams]
        return cmd

    def _under_load(self, r: Round) -> CmdResult:
        """The deploy under the load (after --steady s of it), with the strategy rounds' long
        streams open; the load's summary and the clients' outage in R."""
        args = self.args
        count, seconds = (STREAMS, 2 * args.start_s) if r.kind == "strategy" else (0, 0.0)
        limit = args.steady + DEPLOY_LIMIT_S + seconds + args.tail + 60
        load = CompletionsLoad(
            self.address, rate=args.rate, timeout=args.timeout, max_duration=limit
        ).start()
        streams = []
        try:
            streams = open_streams(self.address, count, seconds=seconds, timeout=args.timeout)
            time.sleep(max(0.0, args.steady - load.now()))
            cmd = self.deploy(r.key, r.strategy, r.data, r.key)
            time.sleep(args.tail)
            end = load.now()
        finally:
            records = load.stop()
        r.streams = [s.join(seconds + 60) for s in streams]
        first, last = cmd.started - load.t0, cmd.ended - load.t0
        r.summary = summarize(
            records, steady=(0.0, first - 1e-6), deploy=(first, last), end=end,
            interval=1 / args.rate,
        )  # fmt: skip
        r.outage_s = no_answer_s(records, first, end)
        return cmd

    def run(self) -> None:
        steps = plan(self.args.rounds)
        self.boot()
        self.build(["base"] + [key for key, *_ in steps])
        log("first deploy of base under restart (set-up, unmeasured; fetches the model file)")
        self.put("base", "restart")
        for key, kind, strategy, data in steps:
            log(f"--- {key}: {strategy} {' '.join(data)}")
            try:
                r = self.measure(key, kind, strategy, data)
            except DeployError as exc:
                r = Round(key, kind, strategy, data, error=str(exc))
            self.rounds.append(r)
            log(f"{key}: {describe(r)}")


def describe(r: Round) -> str:
    if r.kind == "stream":
        return stream_verdict(r).text
    s = r.summary
    if s is None:
        return r.error or "not measured"
    return (
        f"exit {r.rc}, wall {r.wall_s or 0:.1f} s, failed {s.failed}/{s.requests}, streams cut "
        f"{r.streams_cut}/{len(r.streams)}, p99 steady/deploy {s.steady_p99_ms or 0:.0f}/"
        f"{s.deploy_p99_ms or 0:.0f} ms, no answer {r.outage_s or 0:.1f} s, "
        f"start {r.start.phases if r.start else '-'}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n")[0])
    p.add_argument(
        "--start-s",
        type=float,
        default=30.0,
        help="the engine's cold start in seconds (30; e.g. 6 for a smoke run)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="pairs of outage deploys, without then with preparation (2)",
    )
    p.add_argument(
        "--stream-s",
        type=float,
        default=120.0,
        help="the long stream open when a release goes live, seconds (120)",
    )
    p.add_argument(
        "--model-mib",
        type=int,
        default=None,
        help="the model file's size (default: 2048 MiB per 30 s of --start-s)",
    )
    p.add_argument("--rate", type=float, default=20.0, help="requests/s (20)")
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout s (10)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "latest",
        help="where engine.md, engine.json and engine-logs/ go (bench/latest)",
    )
    args = p.parse_args(argv)  # fmt: skip
    if args.start_s <= 0 or args.rounds < 0 or args.stream_s <= 0:
        p.error("--start-s and --stream-s must be positive and --rounds 0 or more")
    if args.model_mib is None:
        args.model_mib = max(16, round(2048 * args.start_s / 30))
    args.steady = max(5.0, args.start_s / 3)
    args.tail = 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if not start("a systemd-nspawn sandbox host", drop_ci_env=True):
        return 2
    command = " ".join(["python -m bench.engine", *map(shlex.quote, raw)])
    date, load_start, others = machine_now()
    with tempfile.TemporaryDirectory(prefix="ai-deploy-bench-engine-") as tmp:
        bench = EngineBench(args, Path(tmp))
        rc, notes = run_guarded(bench.run, bench.down, log)
    env = engine_host.engine_env(args.start_s)
    cold, warm = bench.reads or (None, None)
    size = bench.served.size if bench.served else args.model_mib * 2**20
    load_end = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    info = [
        ("Command", f"`{command}` (as root, from the repository root)"),
        ("Date", f"{date}; runtime {(time.monotonic() - _T0) / 60:.1f} min"),
        ("Machine", f"{os.cpu_count()} CPUs, load average {load_start} at start, {load_end} at "
         f"the end; {len(others)} other sandbox host(s) running at start; the host, the load "
         "and the streams share the cores"),
        ("Engine", f"examples/ai-server's stand-in, a {args.start_s:g} s cold start: "
         + ", ".join(f"{k}={v}" for k, v in env.items())),
        ("Model file", f"{size} bytes fetched by the deploy (models.toml); one read inside the "
         f"host: {cold if cold is None else f'{cold:.2f}'} s with its pages dropped, "
         f"{warm if warm is None else f'{warm:.2f}'} s from the page cache"),
        ("Load", f"{args.rate:g} POST /v1/completions per second, a new connection each, client "
         f"timeout {args.timeout:g} s; {args.steady:g} s steady before the deploy, "
         f"{args.tail:g} s after; strategy rounds: {STREAMS} streams of {2 * args.start_s:g} s; "
         f"long-stream rounds: one of {args.stream_s:g} s (a token every 0.2 s)"),
        ("Deploy", "`pyinfra -y INVENTORY deploy.py --data artifact=PATH --data "
         f"{' --data '.join(DATA)} --data deploy_strategy=S` + the data shown; wall time of the "
         "whole run; \"no answer\": the longest time, from the deploy's start to the end of the "
         "tail, in which no request was answered (the outage the clients saw)"),
    ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    built = preparation_built()
    if not built:
        notes.append("page_cache_warm is not in this checkout's group_data: the with/without "
                     "outage differs by the compile cache only")  # fmt: skip
    (args.out / "engine.md").write_text(render_markdown(info, bench.rounds, built, notes))
    doc = {"info": dict(info), "rounds": [r.as_dict() for r in bench.rounds], "notes": notes}
    (args.out / "engine.json").write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {args.out / 'engine.md'} and engine.json")
    return rc


if __name__ == "__main__":
    sys.exit(main())
