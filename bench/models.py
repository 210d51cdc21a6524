"""Model files: `python -m bench.models [--quick] [--out DIR]` as root, from the repository root.

In one run, on one fresh sandbox host: (1) throughput: a random file (1 GiB; --quick 256 MiB)
served by tests/fakes/model_server.py inside the host on its loopback, downloaded by a plain curl
to /dev/null inside the host (twice, the better kept: the limit of that path), then fetched by
the deploy of a release whose models.toml names it (the fetcher's DONE line gives the fetch's
seconds, the deploy its wall time); (2) the cost of a deploy that fetches nothing: releases with
the same models.toml (its file present) and releases without one, alternated, each a fresh
release with the same uv.lock, same host, strategy and settings. The host is removed by name on
every exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from ai_deploy.sandbox import hosts
from bench import ours
from bench.fleet_load import variant_of
from bench.models_host import PORT, ModelServerHost, Served, build_release
from bench.models_report import (
    Deploy,
    Throughput,
    acceptance,
    deploys_table,
    parse_done,
    present_count,
    render_markdown,
    throughput_table,
)
from bench.proc import CmdResult
from bench.report import contention
from bench.startup import remove_hosts, start
from testkit.load import OK, http_get
from testkit.variants import Variant

REPO = Path(__file__).resolve().parents[1]
STRATEGY = "socket"  # group_data's default; every deploy of the run uses it
DATA = ("models_allow_http=true",)  # every deploy, with models or without: the same settings
FILE = "bench/weights.bin"  # under the server's root
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def _others() -> list[str]:
    """The other sandbox hosts running now (another run or e2e tests share the cores)."""
    return [h.name for h in hosts.list_hosts() if h.running and not h.name.startswith("bm")]


class ModelsBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.started: list[str] = []
        self.host: hosts.Host | None = None
        self.inventory: Path | None = None
        self.server: ModelServerHost | None = None
        self.served: Served | None = None
        self.throughput: Throughput | None = None
        self.deploys: list[Deploy] = []
        self.seen: dict[str, list[str]] = {}  # measured step -> other hosts running before it

    def step(self, name: str) -> None:
        """Before a measured step: a pause, and which other sandbox hosts are running."""
        time.sleep(self.args.settle)
        self.seen[name] = _others()

    def boot(self) -> None:
        booted, inventory = hosts.up(count=1, name=f"bm{os.getpid() % 100000}")
        self.started.extend(h.name for h in booted)
        self.host, self.inventory = booted[0], inventory
        log(f"up: {self.host.name} {self.host.address} ({inventory})")
        ours.setup_host(self.host.address, self.args.model_load)
        self.server = ModelServerHost(self.host.address)
        self.server.start_server()
        log(f"model server listening on the host's 127.0.0.1:{PORT}")

    def down(self) -> None:
        remove_hosts(self.started, log)

    def deploy(self, variant: Variant, why: str) -> tuple[CmdResult, str]:
        """Our deploy of VARIANT (pyinfra, as a person runs it), its output kept in
        logs/WHY.log; returns it and the variant /predict answers with afterwards."""
        assert self.host and self.inventory
        cmd = ours.run(
            self.inventory,
            STRATEGY,
            f"artifact={variant.path}",
            *DATA,
            echo=lambda line: log(f"    {line}") if "models:" in line else None,
        )
        logs = self.args.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{why}.log").write_text(" ".join(map(shlex.quote, cmd.argv)) + "\n\n" + cmd.output)
        answer = http_get(self.host.address, 8000, "/predict?q=bench-check", 10.0)
        serves = (variant_of(answer.body) if answer.status == OK else None) or "down"
        log(f"{why}: exit {cmd.rc}, {cmd.wall_s:.2f} s, serves {serves}")
        return cmd, serves

    def prepare(self) -> dict[str, Variant]:
        """The file, the releases, and the base release deployed (unmeasured)."""
        assert self.server
        log(f"writing {self.args.mib} MiB of random bytes to the server's root on the host")
        self.served = served = self.server.make_file(FILE, self.args.mib)
        log(f"file: {served.size} bytes, sha256 {served.sha256} ({served.hash_s:.2f} s)")
        labels = ["base", "fetch"]
        for i in range(1, self.args.pairs + 1):
            labels += [f"present-{i}", f"none-{i}"]
        releases = {}
        for pad, label in enumerate(labels):
            with_models = label == "fetch" or label.startswith("present")
            manifest = served.manifest() if with_models else None
            releases[label] = build_release(self.workdir, label, pad, manifest)
        log(f"built {len(releases)} releases: {', '.join(labels)}")
        cmd, serves = self.deploy(releases["base"], "setup-base")
        if cmd.rc != 0 or serves != "base":
            raise RuntimeError(f"the base release did not deploy (exit {cmd.rc}, serves {serves})")
        return releases

    def measure_throughput(self, fetch: Variant) -> None:
        assert self.server and self.served
        t = self.throughput = Throughput(self.served.size, hash_s=self.served.hash_s)
        for attempt in (1, 2):
            self.step(f"curl-{attempt}")
            seconds, size = self.server.curl(self.served)
            if size != self.served.size:
                raise RuntimeError(f"curl got {size} bytes of {self.served.size}")
            t.curl_s.append(seconds)
            log(f"curl {attempt}: {seconds:.2f} s")
        self.step("disk-write")
        t.disk_s = self.server.disk_write(self.served, ours.APP_ROOT)
        log(f"copy to the store's disk with fsync (dd): {t.disk_s:.2f} s")
        self.step("fetch")
        cmd, _ = self.deploy(fetch, "fetch")
        t.deploy_rc, t.deploy_wall_s = cmd.rc, cmd.wall_s
        done = [d for d in parse_done(cmd.output) if d.sha256 == self.served.sha256]
        t.fetch = done[-1] if done else None
        if cmd.rc != 0 or t.fetch is None:
            raise RuntimeError(f"the fetch deploy failed or printed no DONE line (exit {cmd.rc})")
        log(f"fetch: {t.fetch.seconds:.2f} s ({t.fetch_mb_s:.0f} MB/s, {t.ratio:.2f}x curl)")

    def measure_pairs(self, releases: dict[str, Variant]) -> None:
        assert self.server and self.served
        for i in range(1, self.args.pairs + 1):
            for kind in ("present", "none"):
                variant = releases[f"{kind}-{i}"]
                before = self.server.requests(self.served)
                self.step(variant.label)
                cmd, serves = self.deploy(variant, variant.label)
                d = Deploy(
                    kind,
                    variant.label,
                    variant.release_id,
                    cmd.rc,
                    cmd.wall_s,
                    serves,
                    present_count(cmd.output),
                    len(parse_done(cmd.output)),
                    self.server.requests(self.served) - before,
                )
                self.deploys.append(d)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 256 MiB, 1 pair")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "latest" / "models")
    p.add_argument("--model-load", type=float, default=2.0, help="MODEL_LOAD_SECONDS (2)")
    p.add_argument("--settle", type=float, default=2.0, help="pause before each deploy, s (2)")
    args = p.parse_args(argv)
    args.mib = 256 if args.quick else 1024
    args.pairs = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if not start("a systemd-nspawn sandbox host", drop_ci_env=True):
        return 2
    command = " ".join(["python -m bench.models", *map(shlex.quote, raw)])
    load_start = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    others_start = _others()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes: list[str] = []
    rc = 0
    with tempfile.TemporaryDirectory(prefix="ai-deploy-bench-models-") as tmp:
        bench = ModelsBench(args, Path(tmp))
        try:
            bench.boot()
            releases = bench.prepare()
            bench.measure_throughput(releases["fetch"])
            bench.measure_pairs(releases)
        except KeyboardInterrupt:
            rc = 130
            notes.append("the run was interrupted; the tables hold what was measured")
        except Exception as exc:
            rc = 1
            log(f"the run stopped on an error: {exc!r}\n{traceback.format_exc()}")
            notes.append(f"the run stopped on an error: {exc!r}")
        finally:
            others_end = _others()
            bench.down()
    load_end = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    t = bench.throughput or Throughput(args.mib * 2**20)
    info = [
        ("Command", f"`{command}` (as root, from the repository root)"),
        ("Date", f"{date}; runtime {(time.monotonic() - _T0) / 60:.1f} min"),
        ("Machine", f"{os.cpu_count()} CPUs; load average {load_start} at start, {load_end} at "
         f"the end; other sandbox hosts running: {len(others_start)} at start, "
         f"{len(others_end)} at the end"),
        ("Contention", contention(bench.seen, "measured steps")),
        ("Host", "one systemd-nspawn sandbox guest; the file server "
         "(tests/fakes/model_server.py) and the fetcher both run in it, over its loopback, "
         "so they share the machine's cores"),
        ("File", f"{t.size} bytes of /dev/urandom, written just before (in the page cache)"),
        ("Deploy", f"`pyinfra -y INVENTORY deploy.py --data artifact=PATH --data "
         f"{' --data '.join(DATA)} --data deploy_strategy={STRATEGY}`, "
         f"MODEL_LOAD_SECONDS={args.model_load:g}, {args.settle:g} s pause before each; wall "
         "time of the whole pyinfra run"),
        ("Pairs", f"{args.pairs} x (a release with the models.toml, then one without), "
         "each a release the host never had, same uv.lock (its venv reused)"),
    ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(render_markdown(info, t, bench.deploys, notes))
    verdict = acceptance(bench.deploys)
    doc = {
        "info": dict(info),
        "throughput": t.as_dict(),
        "deploys": [vars(d) | {"ok": d.ok} for d in bench.deploys],
        "acceptance": vars(verdict),
        "others_before_step": bench.seen,
        "notes": notes,
    }
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{throughput_table(t)}\n\n{deploys_table(bench.deploys)}\n{verdict.text}", flush=True)
    log(f"wrote {args.out / 'results.md'} and results.json")
    return rc


if __name__ == "__main__":
    sys.exit(main())
