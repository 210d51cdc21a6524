"""A local stand-in for a GitHub-hosted runner, enough to run the workflow `ai-deploy init`
writes (.github/workflows/ai-cicd.yml) from its YAML, as written, for a push to a branch
(`refs/heads/...`) or a pull request into main (`refs/pull/N/merge`, which the repository has).

Jobs run in `needs` order, each on a fresh "runner" (its own workspace, RUNNER_TEMP, HOME and
uv tool directories). A `run:` step is a script run with GitHub's default Linux shell
(`bash --noprofile --norc -eo pipefail`) in the workspace, with the variables a runner sets and
the step's and job's `env:`; GITHUB_ENV and GITHUB_PATH are honoured. `${{ ... }}` supports
exactly the expressions the file uses (secrets.X, vars.X, github.sha, github.token, and
`github.ref ==/!= '...'` in `if:`); any other expression, workflow key, action or action input
fails the run, so nothing the file asks for is silently skipped. The stand-ins for checkout and
the artifact actions are here, the caller gives the others; the test's docstring says what each
stands for. Logs read as a run log does: secrets and `::add-mask::` values as ***.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_COMPARE = re.compile(r"github\.ref\s*(==|!=)\s*'([^']*)'")
_TOP_KEYS = {"name", "on", "permissions", "concurrency", "jobs"}
_JOB_KEYS = {"name", "needs", "runs-on", "permissions", "steps", "if", "environment"}
_JOB_KEYS |= {"concurrency", "timeout-minutes", "env"}
_STEP_KEYS = {"name", "uses", "with", "run", "env"}
_SHELL = ("bash", "--noprofile", "--norc", "-eo", "pipefail")  # GitHub's default on Linux
# The machine's trust store stands for the runner image's (uv reaches the package registry).
_PASSED_THROUGH = ("SSL_CERT_FILE", "SSL_CERT_DIR", "LANG")
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_FIXED = "CI=true GITHUB_ACTIONS=true GITHUB_EVENT_NAME=push GITHUB_REF_TYPE=branch RUNNER_OS=Linux"
_FIXED += (
    " RUNNER_ARCH=X64 GITHUB_RUN_NUMBER=1 GITHUB_RUN_ATTEMPT=1 GITHUB_SERVER_URL=https://github.com"
)
_RUNNER_FIXED = dict(item.split("=", 1) for item in _FIXED.split())


class RehearsalError(AssertionError):
    """The workflow asks for something this runner does not stand in for."""


@dataclass
class Contexts:
    """The values `${{ ... }}` may read."""

    secrets: dict[str, str]
    vars: dict[str, str]
    sha: str
    ref: str
    token: str

    @property
    def event(self) -> str:
        """What triggered the run: a pull request's merge ref, else a push."""
        return "pull_request" if self.ref.startswith("refs/pull/") else "push"

    def value(self, expr: str) -> str:
        found = re.fullmatch(r"(secrets|vars)\.([A-Za-z_][A-Za-z0-9_]*)", expr)
        if found:  # an unset secret or variable is the empty string, as on GitHub
            return getattr(self, found.group(1)).get(found.group(2), "")
        if expr in ("github.sha", "github.token"):
            return self.sha if expr == "github.sha" else self.token
        raise RehearsalError(f"expression ${{{{ {expr} }}}} is not supported by the rehearsal")

    def substitute(self, text: Any) -> str:
        return _EXPR.sub(lambda m: self.value(m.group(1)), str(text))

    def condition(self, text: Any) -> bool:
        expr = str(text).strip()
        wrapped = _EXPR.fullmatch(expr)
        found = _COMPARE.fullmatch(wrapped.group(1) if wrapped else expr)
        if not found:
            raise RehearsalError(f"if: {expr!r} is not supported by the rehearsal")
        return (self.ref == found.group(2)) == (found.group(1) == "==")


@dataclass
class StepRecord:
    name: str
    exit_code: int
    seconds: float
    log: str


@dataclass
class Job:
    """One job on its fresh runner: its directories, its environment as the steps see it."""

    job_id: str
    spec: dict[str, Any]
    root: Path
    env: dict[str, str]
    conclusion: str = "pending"
    steps: list[StepRecord] = field(default_factory=list)
    post: list[Callable[[], str]] = field(default_factory=list)

    @property
    def workspace(self) -> Path:
        return Path(self.env["GITHUB_WORKSPACE"])

    @property
    def summary(self) -> Path:
        return Path(self.env["GITHUB_STEP_SUMMARY"])

    def export(self, values: Mapping[str, str]) -> None:
        self.env.update(values)

    def add_path(self, directory: Path) -> None:
        self.env["PATH"] = f"{directory}:{self.env['PATH']}"


def check_inputs(inputs: Mapping[str, str], allowed: set[str], action: str) -> None:
    """Fail the test on an input the stand-in for ACTION does not honour."""
    unknown = sorted(set(inputs) - allowed)
    if unknown:
        raise RehearsalError(f"{action}: inputs the stand-in does not honour: {unknown}")


def _read_env_file(path: Path) -> dict[str, str]:
    """The NAME=value lines of a GITHUB_ENV file (the multi-line form is not stood in for)."""
    lines = path.read_text().splitlines()
    if any("<<" in line.split("=", 1)[0] for line in lines):
        raise RehearsalError(f"multi-line GITHUB_ENV values are not supported: {lines}")
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _glob_root(pattern: str) -> str:
    """The part of PATTERN before its first wildcard component (upload-artifact's search root)."""
    parts: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return os.path.join(*parts) if parts else "."


Action = Callable[[Job, dict[str, str]], str]


@dataclass
class Runner:
    """Runs a workflow for a push of `ctx.sha` to `ctx.ref` of the repository at APP_REPO.

    RUNNER_ENV(job id, permissions) gives the runner variables a job gets beyond GitHub's own;
    ACTIONS adds stand-ins (`owner/name` -> function of the job and the step's inputs that says
    what it did, raising OSError, CalledProcessError or ValueError for a failed step)."""

    root: Path
    app_repo: Path
    ctx: Contexts
    repository: str
    run_id: str
    api_url: str
    runner_env: Callable[[str, dict[str, Any]], dict[str, str]]
    actions: dict[str, Action] = field(default_factory=dict)
    max_job_s: float = 900.0
    jobs: dict[str, Job] = field(default_factory=dict)
    stand_ins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.artifacts = self.root / "artifact-store"
        self._masks = [v for v in self.ctx.secrets.values() if v]
        self.actions = {
            "actions/checkout": self._checkout,
            "actions/upload-artifact": self._upload,
            "actions/download-artifact": self._download,
            **self.actions,
        }

    # -- the run ------------------------------------------------------------------------------

    def run(self, workflow: Path) -> dict[str, Job]:
        spec = yaml.safe_load(workflow.read_text())
        on = spec.get("on", spec.get(True))  # YAML 1.1 reads a bare `on` key as True
        spec.pop(True, None)
        self._known(spec, _TOP_KEYS | {"on"}, "the workflow")
        branches = ((on or {}).get(self.ctx.event) or {}).get("branches", [])
        wanted = "main" if self.ctx.event == "pull_request" else self.ctx.ref
        if wanted.removeprefix("refs/heads/") not in branches:
            raise RehearsalError(f"a {self.ctx.event} of {self.ctx.ref} does not trigger this")
        needs = {job_id: self._needs(job) for job_id, job in spec["jobs"].items()}
        for job_id in TopologicalSorter(needs).static_order():
            self._run_job(spec, job_id, spec["jobs"][job_id])
        return self.jobs

    @staticmethod
    def _needs(spec: dict[str, Any]) -> list[str]:
        needs = spec.get("needs", [])
        return [needs] if isinstance(needs, str) else list(needs)

    @staticmethod
    def _known(spec: Mapping[Any, Any], allowed: set[str], where: str) -> None:
        unknown = sorted(str(k) for k in spec if k not in allowed)
        if unknown:
            raise RehearsalError(f"{where}: keys the rehearsal does not stand in for: {unknown}")

    def _run_job(self, workflow: dict[str, Any], job_id: str, spec: dict[str, Any]) -> None:
        self._known(spec, _JOB_KEYS, f"job {job_id}")
        job = Job(job_id, spec, self.root / "jobs" / job_id, {})
        self.jobs[job_id] = job
        needs_met = all(self.jobs[n].conclusion == "success" for n in self._needs(spec))
        if not needs_met or ("if" in spec and not self.ctx.condition(spec["if"])):
            job.conclusion = "skipped"
            return
        app = self.repository.split("/")[-1]
        temp, home = job.root / "temp", job.root / "home"
        workspace = job.root / "work" / app / app
        for directory in (temp, home, workspace):
            directory.mkdir(parents=True)
        owner = self.repository.split("/")[0]
        job.env = {
            **{k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ},
            **_RUNNER_FIXED,
            "PATH": BASE_PATH,
            "HOME": str(home),
            "GITHUB_WORKFLOW": str(workflow.get("name", "")),
            "GITHUB_JOB": job_id,
            "GITHUB_SHA": self.ctx.sha,
            "GITHUB_REF": self.ctx.ref,
            "GITHUB_REF_NAME": self.ctx.ref.removeprefix("refs/heads/"),
            "GITHUB_REPOSITORY": self.repository,
            "GITHUB_REPOSITORY_OWNER": owner,
            "GITHUB_ACTOR": owner,
            "GITHUB_RUN_ID": self.run_id,
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_STEP_SUMMARY": str(job.root / "step_summary.md"),
            "GITHUB_API_URL": self.api_url,
            "RUNNER_TEMP": str(temp),
            **self.runner_env(job_id, spec.get("permissions") or {}),
        }
        if self.ctx.event == "pull_request":
            job.env |= {"GITHUB_EVENT_NAME": "pull_request", "GITHUB_BASE_REF": "main"}
            job.env["GITHUB_REF_NAME"] = self.ctx.ref.removeprefix("refs/pull/")
        job.export({k: self.ctx.substitute(v) for k, v in (spec.get("env") or {}).items()})
        deadline = time.monotonic() + min(float(spec.get("timeout-minutes", 360)) * 60, 3600)
        deadline = min(deadline, time.monotonic() + self.max_job_s)
        job.conclusion = "success"
        for index, step in enumerate(spec["steps"]):
            if not self._run_step(job, index, step, deadline):
                job.conclusion = "failure"
                break
        for cleanup in job.post:
            self._note(job, f"post: {cleanup()}")

    # -- steps --------------------------------------------------------------------------------

    def _run_step(self, job: Job, index: int, step: dict[str, Any], deadline: float) -> bool:
        self._known(step, _STEP_KEYS, f"step {index} of {job.job_id}")
        name = str(step.get("name", f"step {index}"))
        started = time.monotonic()
        if "uses" in step:
            action, _, ref = str(step["uses"]).partition("@")
            if not re.fullmatch(r"[0-9a-f]{40}", ref):
                raise RehearsalError(f"{step['uses']}: actions are pinned to a full commit SHA")
            if action not in self.actions:
                raise RehearsalError(f"no stand-in for {action} (step {name!r})")
            inputs = {k: self.ctx.substitute(v) for k, v in (step.get("with") or {}).items()}
            try:
                did, code = self.actions[action](job, inputs), 0
            except (OSError, subprocess.CalledProcessError, ValueError) as exc:
                did, code = f"failed: {exc}", 1
            self._note(job, f"{action}: {did}")
            job.steps.append(StepRecord(name, code, time.monotonic() - started, self._masked(did)))
            return code == 0
        step_env = {k: self.ctx.substitute(v) for k, v in (step.get("env") or {}).items()}
        script = job.root / "temp" / f"{secrets.token_hex(8)}.sh"
        script.write_text(self.ctx.substitute(step["run"]))
        files = {n: job.root / "temp" / f"{n}-{index}" for n in ("ENV", "PATH", "OUTPUT")}
        for path in files.values():
            path.touch()
        env = {**job.env, **{f"GITHUB_{n}": str(p) for n, p in files.items()}, **step_env}
        try:
            proc = subprocess.run(
                [*_SHELL, str(script)],
                cwd=job.workspace,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=max(deadline - time.monotonic(), 1),
            )
            code, out = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            out = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode()
            code = 124
        job.export(_read_env_file(files["ENV"]))
        for line in reversed(files["PATH"].read_text().splitlines()):
            job.add_path(Path(line))
        self._masks += [
            m.split("::add-mask::", 1)[1] for m in out.splitlines() if "::add-mask::" in m
        ]
        log = self._masked(out)
        job.steps.append(StepRecord(name, code, time.monotonic() - started, log))
        return code == 0

    def _masked(self, text: str) -> str:
        for value in sorted({m for m in self._masks if m.strip()}, key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    def _note(self, job: Job, what: str) -> None:
        self.stand_ins.append(f"[{job.job_id}] {self._masked(what)}")

    def log(self) -> str:
        """Every job's steps with exit code, time and output, as a run's log pages show them."""
        out = [*(f"stand-in {line}" for line in self.stand_ins), ""]
        for job in self.jobs.values():
            out.append(f"=== job {job.job_id}: {job.conclusion}")
            for s in job.steps:
                out.append(f"--- {s.name} (exit {s.exit_code}, {s.seconds:.1f} s)")
                out.append(s.log.rstrip())
        return "\n".join(out)

    # -- action stand-ins ---------------------------------------------------------------------

    def _checkout(self, job: Job, inputs: dict[str, str]) -> str:
        keys = {"persist-credentials", "sparse-checkout", "sparse-checkout-cone-mode"}
        check_inputs(inputs, keys, "actions/checkout")
        ws = job.workspace

        def git(*args: str) -> str:
            cmd = ["git", "-C", str(ws), *args]
            return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

        branch = self.ctx.ref.removeprefix("refs/heads/")
        url = f"file://{self.app_repo}"
        clone = ["git", "clone", "-q", "--no-checkout", "--depth", "1"]
        if self.ctx.event == "push":
            subprocess.run([*clone, "-b", branch, url, str(ws)], check=True, capture_output=True)
        else:  # a pull request: its merge ref, fetched as actions/checkout does
            subprocess.run([*clone, url, str(ws)], check=True, capture_output=True)
            git("fetch", "-q", "--depth", "1", "origin", f"+{self.ctx.ref}:{self.ctx.ref}")
        sparse = inputs.get("sparse-checkout", "").split()
        if sparse:
            cone = inputs.get("sparse-checkout-cone-mode", "true") != "false"
            git("sparse-checkout", "set", "--cone" if cone else "--no-cone", *sparse)
        git("checkout", "-q", "--detach", self.ctx.sha)
        files = git("ls-files").split()
        listed = ", ".join(files) if sparse else f"{len(files)} files"
        return f"cloned {url} at {self.ctx.sha[:12]} into the workspace ({listed})"

    def _upload(self, job: Job, inputs: dict[str, str]) -> str:
        keys = {"name", "path", "if-no-files-found", "retention-days"}
        check_inputs(inputs, keys, "actions/upload-artifact")
        patterns = [p.strip() for p in inputs["path"].splitlines() if p.strip()]
        root = Path(os.path.commonpath([_glob_root(p) for p in patterns]))
        found = sorted({f for p in patterns for f in job.workspace.glob(p) if f.is_file()})
        if not found and inputs.get("if-no-files-found", "warn") == "error":
            raise ValueError(f"no files found for {patterns}")
        store = self.artifacts / inputs["name"]
        if store.exists():
            raise ValueError(f"an artifact named {inputs['name']} exists in this run")
        for f in found:
            target = store / f.relative_to(job.workspace / root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        names = [str(f.relative_to(job.workspace)) for f in found]
        return f"uploaded {names} as artifact {inputs['name']}"

    def _download(self, job: Job, inputs: dict[str, str]) -> str:
        check_inputs(inputs, {"name", "path"}, "actions/download-artifact")
        store = self.artifacts / inputs["name"]
        if not store.is_dir():
            raise ValueError(f"artifact {inputs['name']} not found in this run")
        dest = job.workspace / inputs.get("path", ".")
        shutil.copytree(store, dest, dirs_exist_ok=True)
        names = sorted(str(f.relative_to(job.workspace)) for f in dest.rglob("*") if f.is_file())
        return f"downloaded artifact {inputs['name']} to {names}"


__all__ = [
    "BASE_PATH",
    "Action",
    "Contexts",
    "Job",
    "RehearsalError",
    "Runner",
    "StepRecord",
    "check_inputs",
]
