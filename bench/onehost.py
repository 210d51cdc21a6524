"""One host, two tools, side by side: `python -m bench.onehost [--base REF] [--rounds N]` as
root, from the repository root.

Is a single-target deploy (`ai-deploy deploy --no-gcp --host ADDRESS`) slower with the working
tree's tool ("after") than with the tool at git REF ("before", default e2b7edb)? The before tool
is REF's tree from `git archive`, installed into a venv of its own (`uv sync --frozen`, from
uv's cache when it can); the after tool is this checkout and its .venv. Each runs from its own
tree, so each deploys its own deploy.py and group_data.

On one fresh sandbox host (named b23-PID, removed by name on every exit), with the example
app's model start at 2 s (MODEL_LOAD_SECONDS in the host's .env, which the deploy keeps) and
the group_data strategy (socket): one unmeasured code deploy per tool, then N rounds, each the
before tool then the after tool (ABAB...), each tool doing three measured runs:
1. code: `ai-deploy deploy -v --no-gcp --host ADDRESS --artifact NEW`, NEW the example app
   built with a code change the host never had (every code deploy its own release: upload,
   extract and switch each time; same uv.lock, so the venv is reused as in a code-only
   change); checked: exit 0 and /predict answers from NEW;
2. noop: the same command with the same artifact; checked: exit 0, same release, same
   process (/health's pid unchanged: nothing restarted);
3. pyinfra: the same code deploy as a plain `pyinfra -y INVENTORY deploy.py --data
   artifact=NEXT` with that tool's pyinfra and tree (the sandbox inventory); checked as 1.
Wall time is process start to exit on this side. The runs write and keep bytecode as an installed
tool does (PYTHONDONTWRITEBYTECODE is left out of their environment). Medians per tool and run kind
over the runs that passed their check, ratios after/before; with REF equal to the working tree's
code the ratios show the noise. The breakdown of each run (see bench/onehost_parse.py for how each
part is measured) comes from the phase durations on the tool's closing `phases:` line and the time
each output line was read. Writes bench/latest/onehost.md (or --out), and beside it
onehost/runs.json and onehost/logs/ (every run's output, each line with its seconds since the
process started).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.paths import ssh_key_path
from bench import onehost_parse, ours
from bench.fleet_load import variant_of
from bench.onehost_parse import parse_phases, pyinfra_breakdown, tool_breakdown
from bench.onehost_report import Run, render_markdown, walls_table
from bench.proc import CmdResult, run_streamed
from bench.report import contention
from bench.startup import remove_hosts, start
from testkit.load import OK, http_get
from testkit.variants import Variant, build

REPO = Path(__file__).resolve().parents[1]
BASE = "e2b7edb"
RUN_LIMIT_S = 600.0
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Tool:
    name: str  # before / after
    root: Path  # its tree: cwd of its runs, its deploy.py
    what: str  # for the report

    def bin(self, program: str) -> str:
        return str(self.root / ".venv" / "bin" / program)


def install_base(ref: str, workdir: Path) -> Tool:
    """REF's tree from `git archive` in WORKDIR/base with a venv of its own."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    root = workdir / "base"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", sha],
        capture_output=True,
        timeout=120,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True, timeout=120)
    for extra in (["--offline"], []):  # uv's cache first; the package index only if needed
        done = subprocess.run(
            ["uv", "sync", "--frozen", "--quiet", *extra],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode == 0:
            return Tool("before", root, f"`{ref}` ({sha[:12]}), from git archive, its own venv")
    raise RuntimeError(f"uv sync of {ref}'s tree failed: {done.stderr.strip()[-2000:]}")


def working_tree() -> Tool:
    head = _git("rev-parse", "--short=12", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    state = " with uncommitted changes" if dirty else ""
    return Tool("after", REPO, f"the working tree at {head}{state}, the project's .venv")


def _others() -> list[str]:
    """The other sandbox hosts running now (e2e tests or other runs share the cores)."""
    return [h.name for h in hosts.list_hosts() if h.running and not h.name.startswith("b23-")]


class OneHostBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, tools: list[Tool]) -> None:
        self.args, self.workdir, self.tools = args, workdir, tools
        self.started: list[str] = []
        self.host: hosts.Host | None = None
        self.inventory: Path | None = None
        self.runs: list[Run] = []
        self.built = 0
        self.busy: dict[str, list[str]] = {}  # run -> other sandbox hosts running before it
        self.logs = args.out.with_suffix("") / "logs"

    def boot(self) -> None:
        booted, inventory = hosts.up(count=1, name=f"b23-{os.getpid() % 100000}")
        self.started.extend(h.name for h in booted)
        self.host, self.inventory = booted[0], inventory
        log(f"up: {self.host.name} {self.host.address} ({inventory})")
        ours.setup_host(self.host.address, self.args.model_load)

    def down(self) -> None:
        remove_hosts(self.started, log)

    def artifact(self, label: str) -> Variant:
        """The example app with a change of its own (/predict names LABEL): a new release."""
        self.built += 1
        return build(self.workdir / "releases", label, self.built)

    def _answer(self, path: str) -> tuple[str, dict[str, object]]:
        assert self.host
        answer = http_get(self.host.address, 8000, path, 10.0)
        if answer.status != OK:
            return "down", {}
        try:
            data = json.loads(answer.body)
        except ValueError:
            return "?", {}
        return (variant_of(answer.body) or "?"), data if isinstance(data, dict) else {}

    def serves(self) -> str:
        return self._answer("/predict?q=bench-check")[0]

    def pid(self) -> object:
        return self._answer("/health")[1].get("pid")

    def _run(self, tool: Tool, argv: list[str], name: str, *, ssh: bool) -> CmdResult:
        env: dict[str, str] = {}  # plain pyinfra: user and key from the sandbox inventory
        if ssh:  # as tests/e2e runs the tool on sandbox hosts; the key never in argv or logs
            key = ssh_key_path().read_text()
            env = {"AI_DEPLOY_SSH_USER": "ubuntu", "AI_DEPLOY_SSH_PRIVATE_KEY": key}
        self.busy[name] = _others()
        time.sleep(self.args.settle)
        cmd = run_streamed(argv, timeout=RUN_LIMIT_S, cwd=tool.root, env=env)
        self.logs.mkdir(parents=True, exist_ok=True)
        stamped = "".join(f"{t - cmd.started:7.2f} {line}" for t, line in cmd.lines)
        head = f"(cwd {tool.root})\n{' '.join(map(shlex.quote, argv))}\n\n"
        (self.logs / f"{name}.log").write_text(head + stamped + f"\n(exit {cmd.rc})\n")
        return cmd

    def deploy(self, tool: Tool, variant: Variant, name: str) -> CmdResult:
        """`ai-deploy deploy -v --no-gcp --host` of VARIANT with TOOL, from its tree."""
        assert self.host
        argv = [
            tool.bin("ai-deploy"), "deploy", "-v", "--no-gcp", "--host", self.host.address,
            "--artifact", str(variant.path),
        ]  # fmt: skip
        return self._run(tool, argv, name, ssh=True)

    def pyinfra(self, tool: Tool, variant: Variant, name: str) -> CmdResult:
        """A plain pyinfra run of TOOL's deploy.py with VARIANT over the sandbox inventory."""
        assert self.inventory
        argv = [tool.bin("pyinfra"), "-y", str(self.inventory), "deploy.py"]
        argv += ["--data", f"artifact={variant.path}"]
        return self._run(tool, argv, name, ssh=False)

    def record(self, tool: Tool, rnd: int, kind: str, cmd: CmdResult, why: str, name: str) -> None:
        if cmd.rc != 0:
            why = f"exit {cmd.rc}" + (f"; {why}" if why else "")
        phases = parse_phases(cmd.output)
        if kind == "pyinfra":
            parts = pyinfra_breakdown(cmd.lines, cmd.started, cmd.ended)
        else:
            parts = tool_breakdown(cmd.lines, cmd.started, cmd.ended, phases)
        run = Run(tool.name, rnd, kind, cmd.rc, cmd.wall_s, not why, why, phases, parts, name)
        self.runs.append(run)
        log(f"{name}: exit {cmd.rc}, {cmd.wall_s:.2f} s" + (f", NOT OK: {why}" if why else ""))

    def warm_up(self) -> None:
        """One unmeasured code deploy per tool: the host's first set-up, each venv's first
        start."""
        for tool in self.tools:
            variant = self.artifact(f"warm-{tool.name}")
            cmd = self.deploy(tool, variant, f"0-{tool.name}-warm-up")
            serves = self.serves()
            log(f"warm-up with {tool.name}: exit {cmd.rc}, {cmd.wall_s:.2f} s, serves {serves}")
            if cmd.rc != 0 or serves != variant.label:
                raise RuntimeError(
                    f"the {tool.name} tool's first deploy failed (exit {cmd.rc}, serves {serves});"
                    f" see {self.logs}/0-{tool.name}-warm-up.log"
                )

    def turn(self, tool: Tool, rnd: int) -> None:
        code = self.artifact(f"r{rnd}-{tool.name}-code")
        name = f"{rnd}-{tool.name}-code"
        cmd = self.deploy(tool, code, name)
        serves = self.serves()
        self.record(
            tool, rnd, "code", cmd, "" if serves == code.label else f"serves {serves}", name
        )
        pid, name = self.pid(), f"{rnd}-{tool.name}-noop"
        cmd = self.deploy(tool, code, name)
        serves, after = self.serves(), self.pid()
        why = "" if serves == code.label else f"serves {serves}"
        if pid is None or after != pid:
            why = f"{why}; " if why else ""
            why += f"the service restarted (pid {pid} -> {after})"
        self.record(tool, rnd, "noop", cmd, why, name)
        nxt, name = self.artifact(f"r{rnd}-{tool.name}-pyinfra"), f"{rnd}-{tool.name}-pyinfra"
        cmd = self.pyinfra(tool, nxt, name)
        serves = self.serves()
        self.record(
            tool, rnd, "pyinfra", cmd, "" if serves == nxt.label else f"serves {serves}", name
        )

    def measure(self) -> None:
        for rnd in range(1, self.args.rounds + 1):
            for tool in self.tools:
                self.turn(tool, rnd)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.onehost", description=__doc__.split("\n")[0])
    p.add_argument("--base", default=BASE, help=f"git ref of the before tool ({BASE})")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each before then after (3)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "latest" / "onehost.md")
    p.add_argument("--model-load", type=float, default=2.0, help="MODEL_LOAD_SECONDS (2)")
    p.add_argument("--settle", type=float, default=1.0, help="pause before each run, s (1)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: give 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if not start("a systemd-nspawn sandbox host", drop_ci_env=True):
        return 2
    os.environ.pop("AI_DEPLOY_VERBOSE", None)  # -v is given where wanted
    # As an installed tool runs: each venv keeps the bytecode its first (warm-up) run writes.
    # Without it every start compiles the ~1300 modules it imports again (seconds on 2 cores).
    no_pyc = os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None
    command = " ".join(["python -m bench.onehost", *map(shlex.quote, raw)])
    load_start = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes: list[str] = []
    rc = 0
    with tempfile.TemporaryDirectory(prefix="ai-deploy-bench-onehost-") as tmp:
        tools = [working_tree()]
        bench = OneHostBench(args, Path(tmp), tools)
        try:
            log(f"installing the before tool ({args.base}) into its own venv")
            tools.insert(0, install_base(args.base, Path(tmp)))
            bench.boot()
            bench.warm_up()
            bench.measure()
        except KeyboardInterrupt:
            rc = 130
            notes.append("the run was interrupted; the tables hold what was measured")
        except Exception as exc:
            rc = 1
            log(f"the run stopped on an error: {exc!r}\n{traceback.format_exc()}")
            notes.append(f"the run stopped on an error: {exc!r}")
        finally:
            bench.down()
    bad = [r for r in bench.runs if not r.ok]
    if bad:
        rc = rc or 1
        notes.append(f"{len(bad)} run(s) failed their check and are left out of the medians")
    load_end = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    info = [
        ("Command", f"`{command}` (as root, from the repository root)"),
        ("Date", f"{date}; runtime {(time.monotonic() - _T0) / 60:.1f} min"),
        ("Machine", f"{os.cpu_count()} CPUs; load average {load_start} at start, {load_end} "
         "at the end"),
        ("Contention", contention(bench.busy, "runs")),
        *((f"Tool: {t.name}", t.what) for t in tools),
        ("Host", "one systemd-nspawn sandbox guest; the example app, MODEL_LOAD_SECONDS="
         f"{args.model_load:g}, strategy from group_data (socket); {args.settle:g} s pause "
         "before each run"),
        ("Rounds", f"{args.rounds}, each: before (code, noop, pyinfra), then after (the same)"),
        ("Bytecode", "each venv keeps the .pyc its warm-up run wrote"
         + ("; PYTHONDONTWRITEBYTECODE, set where the run started, was left out of the "
            "runs' environment" if no_pyc else "")),
    ]  # fmt: skip
    out_dir = args.out.with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    how = onehost_parse.__doc__ or ""
    how = how[how.find("The parts") :]
    args.out.write_text(render_markdown(info, bench.runs, how, notes))
    doc = {"info": dict(info), "runs": [r.as_dict() for r in bench.runs], "notes": notes}
    (out_dir / "runs.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(walls_table(bench.runs), flush=True)
    log(f"wrote {args.out}, {out_dir / 'runs.json'} and {bench.logs}/")
    return rc


if __name__ == "__main__":
    sys.exit(main())
