"""Run the deploy benchmark: `python -m bench.run [--quick] [--strategies restart,socket,bluegreen]
[--model-load 3] [--out bench/results]` as root, from the repository root.

For each model-load setting it boots one fresh sandbox host per target (the seed's procedure
and each strategy of ours), prepares them the same way (.env with MODEL_LOAD_SECONDS, a first
deploy of the base release, unmeasured), then measures every scenario on every target under
the same steady load, returning each host to the base release between scenarios (unmeasured).
The hosts it started are removed at the end, by name.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from ai_deploy.host.uvbin import uv_binary
from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.image import SandboxError
from bench import ours, report, seed
from bench.scenarios import (
    SCENARIOS,
    DeployError,
    Measurement,
    OursTarget,
    SeedTarget,
    Target,
    Windows,
    measure,
    scenario,
)
from bench.startup import start
from testkit.remote import ssh
from testkit.variants import RELOCK_DEPENDENCY, Variant, build, crash_at_import, health_500
from testkit.variants import relock_on_host as relock_step

REPO = Path(__file__).resolve().parents[1]
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: not a comma-separated list of numbers"
        ) from exc
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers >= 0")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="smoke run: scenarios same, code, crash; 3 s windows"
    )
    p.add_argument(
        "--strategies",
        type=_names,
        default=list(ours.STRATEGIES),
        help="our strategies to measure (default: restart,socket,bluegreen)",
    )
    p.add_argument(
        "--scenarios",
        type=_names,
        default=None,
        help=f"scenarios to run (default all: {','.join(s.key for s in SCENARIOS)})",
    )
    p.add_argument(
        "--model-load",
        type=_floats,
        default=[3.0],
        help="MODEL_LOAD_SECONDS settings, comma-separated (default 3)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="results directory (default bench/results)",
    )
    p.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="client timeout in seconds, all targets but socket (default 2)",
    )
    p.add_argument(
        "--socket-timeout",
        type=float,
        default=10.0,
        help="client timeout for the socket strategy (default 10)",
    )
    p.add_argument(
        "--steady",
        type=float,
        default=None,
        help="seconds of load before each deploy (default 5, quick 3)",
    )
    p.add_argument(
        "--tail",
        type=float,
        default=None,
        help="seconds of load after each deploy (default 5, quick 3)",
    )
    p.add_argument(
        "--seed-health-attempts",
        type=int,
        default=seed.HEALTH_ATTEMPTS,
        help="the seed's health check tries (default 12, as the seed)",
    )
    p.add_argument(
        "--seed-health-interval",
        type=float,
        default=seed.HEALTH_INTERVAL_S,
        help="seconds between the seed's health check tries (default 5, as the seed)",
    )
    args = p.parse_args(argv)
    if args.scenarios is None:
        args.scenarios = [s.key for s in SCENARIOS if s.quick or not args.quick]
    for key in args.scenarios:
        try:
            scenario(key)
        except KeyError as exc:
            p.error(str(exc))
    if not args.strategies:
        p.error("--strategies: give at least one")
    args.strategies = list(dict.fromkeys(args.strategies))
    args.scenarios = list(dict.fromkeys(args.scenarios))
    default_window = 3.0 if args.quick else 5.0
    args.steady = default_window if args.steady is None else args.steady
    args.tail = default_window if args.tail is None else args.tail
    return args


class Run:
    """One benchmark run: the artifacts, the hosts it started, the measurements."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.variants: dict[str, Variant] = {}
        self.started: list[str] = []
        self.settings: dict[float, list[Measurement]] = {}
        self.notes: list[str] = list(seed.DIFFERENCES)
        self.windows = Windows(steady_s=args.steady, tail_s=args.tail, rate=args.rate)
        self.unavailable = {
            s: reason for s in args.strategies if (reason := ours.unavailable_reason(s))
        }
        for s, reason in self.unavailable.items():
            log(f"strategy {s}: NOT AVAILABLE: {reason}")
            self.notes.append(
                f"strategy {s} not measured: {reason}; pyinfra would ignore "
                "--data deploy_strategy and measure restart under its name"
            )

    def timeout_for(self, target: str) -> float:
        return self.args.socket_timeout if target == "socket" else self.args.timeout

    # --- artifacts ------------------------------------------------------------------------

    def build_variants(self) -> None:
        wanted = {scenario(k).variant for k in self.args.scenarios}
        wanted |= {p for k in self.args.scenarios for p in scenario(k).prep}
        specs = {"base": None, "code": None, "crash": crash_at_import, "health500": health_500}
        for pad, (label, patch) in enumerate(specs.items()):
            if label == "base" or label in wanted:
                self.variants[label] = build(self.workdir, label, pad, patch=patch)
                log(f"artifact {label}: {self.variants[label].path.name}")

    def build_lock_variant(self, address: str) -> None:
        if "lock" in self.variants or "lock" not in self.args.scenarios:
            return
        log(f"re-locking a copy of examples/ai-server with {RELOCK_DEPENDENCY} on {address}")
        self.variants["lock"] = build(self.workdir, "lock", 9, relock=relock_step(address))
        log(f"artifact lock: {self.variants['lock'].path.name}")

    # --- hosts ----------------------------------------------------------------------------

    def boot(self, name: str) -> tuple[str, Path]:
        booted, inventory = hosts.up(count=1, name=name)
        self.started.extend(h.name for h in booted)
        log(f"host {name} up at {booted[0].address}")
        return booted[0].address, inventory

    def down(self, names: list[str]) -> None:
        mine = [n for n in names if n in self.started]
        if not mine:
            return
        try:
            for name in mine:
                try:
                    hosts.down([name])
                    log(f"removed host {name}")
                except SandboxError as exc:  # removed from outside already
                    log(f"host {name}: {exc}")
        finally:
            self.started = [n for n in self.started if n not in mine]

    # --- one model-load setting -----------------------------------------------------------

    def setting(self, index: int, model_load: float) -> None:
        log(f"=== MODEL_LOAD_SECONDS={model_load:g} ===")
        measurements: list[Measurement] = []
        self.settings[model_load] = measurements
        prefix = f"bench{os.getpid() % 100000}-{index}"
        names: list[str] = []
        targets: list[Target] = []
        failed: dict[str, str] = dict(self.unavailable)
        try:
            name = f"{prefix}-seed"
            names.append(name)
            address, _ = self.boot(name)
            arch = ssh(address, "uname -m").strip()
            version = str(ours.group_data_value("uv_version"))
            seed.setup_host(address, uv_binary(version, arch), model_load)
            log(f"seed host ready: the guide's unit, .env, uv {version} at ~/.local/bin/uv")
            self.build_lock_variant(address)
            seed_target = SeedTarget(
                address,
                self.timeout_for("seed"),
                self.args.seed_health_attempts,
                self.args.seed_health_interval,
            )
            seed_target.ready_timeout = 120 + model_load
            seed_target.host_name = name
            log("seed: first deploy of the base release (set-up, unmeasured)")
            seed_target.put(self.variants["base"], None)
            targets.append(seed_target)
            for strategy in self.args.strategies:
                if strategy in failed:
                    continue
                name = f"{prefix}-{strategy}"
                names.append(name)
                address, inventory = self.boot(name)
                ours.setup_host(address, model_load)
                target = OursTarget(strategy, address, inventory, self.timeout_for(strategy))
                target.ready_timeout = 120 + model_load
                target.host_name = name
                log(f"{strategy}: first deploy of the base release (set-up, unmeasured)")
                try:
                    target.put(self.variants["base"], None)
                except DeployError as exc:
                    failed[strategy] = "its first deploy (set-up) failed, see the notes"
                    log(f"strategy {strategy}: DEPLOY FAILED at set-up:\n{exc}")
                    self.notes.append(
                        f"strategy {strategy} (load {model_load:g} s): its first deploy failed, "
                        "so nothing was measured: "
                        + " / ".join(line.strip() for line in str(exc).splitlines()[-8:])
                    )
                    continue
                if strategy != "restart":
                    self.notes.append(
                        f"strategy {strategy} (load {model_load:g} s) units after set-up: "
                        + "; ".join(ours.units(address).split("\n")).strip("; ")
                    )
                targets.append(target)
            order = ["seed", *self.args.strategies]
            for key in self.args.scenarios:
                sc = scenario(key)
                log(f"--- scenario {key}: {sc.title}")
                for tname in order:
                    if tname in failed:
                        measurements.append(
                            Measurement(
                                key,
                                tname,
                                model_load,
                                self.timeout_for(tname),
                                error=f"not measured: {failed[tname]}",
                            )
                        )
                        continue
                    target = next(t for t in targets if t.name == tname)
                    log(
                        f"{key} / {tname}: steady {self.windows.steady_s:g} s, deploy, "
                        f"tail {self.windows.tail_s:g} s"
                    )
                    m = measure(
                        target,
                        sc,
                        self.variants,
                        self.windows,
                        model_load,
                        echo=lambda line: log(f"    {line}"),
                    )
                    measurements.append(m)
                    log(f"{key} / {tname}: {describe(m)}")
        finally:
            self.down(names)


def describe(m: Measurement) -> str:
    if m.summary is None or m.outcome is None:
        return m.error or "not measured"
    s, o = m.summary, m.outcome
    return (
        f"{o.result}, wall {o.wall_s:.1f} s, failed {s.failed}/{s.requests} "
        f"({', '.join(f'{k} {n}' for k, n in s.failures_by_status.items()) or 'none'}), "
        f"longest failure {s.longest_failure_s:.2f} s, p99 steady/deploy "
        f"{s.steady_p99_ms or 0:.0f}/{s.deploy_p99_ms or 0:.0f} ms, serves {s.serves_after}"
    )


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if not start("systemd-nspawn sandbox hosts"):
        return 2
    python = os.path.relpath(sys.executable, Path.cwd())
    command = " ".join([python, "-m", "bench.run", *(shlex.quote(a) for a in raw)])
    others = [h.name for h in hosts.list_hosts() if h.running]
    load_avg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    started_at = datetime.now(timezone.utc)
    log(
        f"{command}: scenarios {','.join(args.scenarios)}; strategies "
        f"{','.join(args.strategies)}; model load {','.join(f'{v:g}' for v in args.model_load)} s"
    )
    rc = 0
    with tempfile.TemporaryDirectory(prefix="ai-deploy-bench-") as tmp:
        run = Run(args, Path(tmp))
        try:
            run.build_variants()
            seed.write_script(args.out / "seed-deploy.sh")
            for i, ml in enumerate(args.model_load, 1):
                run.setting(i, ml)
        except KeyboardInterrupt:
            rc = 130
            log("interrupted: removing the hosts this run started")
            run.notes.append("the run was interrupted; the tables hold what was measured")
        except Exception as exc:
            rc = 1
            log(f"the run stopped on an error: {exc!r}\n{traceback.format_exc()}")
            run.notes.append(
                f"the run stopped on an error: {exc!r}; the tables hold what was measured"
            )
        finally:
            run.down(list(run.started))
        timeouts = f"{args.timeout:g} s" + (
            f" (socket: {args.socket_timeout:g} s)" if "socket" in args.strategies else ""
        )
        info = report.RunInfo(
            command=command,
            date=started_at.strftime("%Y-%m-%d %H:%M UTC"),
            machine=f"{os.cpu_count()} CPUs, load average {load_avg} at start",
            hosts=(
                "systemd-nspawn sandbox guests (Debian 12, systemd, sshd), one per target, fresh "
                f"per model-load setting; {len(others)} other sandbox host(s) were running"
            ),
            load=f"{args.rate:g} requests/s, GET /predict (~50 ms of work), a new connection each",
            timeouts=timeouts,
            windows=f"{args.steady:g} s steady load before each deploy, {args.tail:g} s after",
            seed_health=(
                f"{args.seed_health_attempts} tries, {args.seed_health_interval:g} s apart "
                "(curl -s -f from outside, as the seed)"
            ),
            runtime_s=time.monotonic() - _T0,
            notes=tuple(run.notes),
        )
        path = report.write_results(
            args.out,
            info,
            run.settings,
            {"variants": {k: v.release_id for k, v in run.variants.items()}},
        )
    minutes = (time.monotonic() - _T0) / 60
    log(f"wrote {path} (and results.json, charts/, logs/) in {minutes:.1f} min")
    print(path.read_text())
    return rc


if __name__ == "__main__":
    sys.exit(main())
