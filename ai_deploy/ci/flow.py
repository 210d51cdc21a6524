"""`ai-deploy deploy`, `rollback` and `restart`: one engine for every target kind and verb, one
function a phase.

check the artifact and settings → the targets and the way to each (ai_deploy.ci.connect.access: the
window or IAP tunnels, host keys, the run's key) → the rollout (ai_deploy.ci.fleet and
ai_deploy.rollout: every lock taken, canary and batches, each host checked from outside, a
switch-back of exactly the hosts this run switched, each to what it served before, with every
lock still held; one target is a rollout of one) → the report. Access contexts sit on one
stack, so they are removed on every way out, SIGINT, SIGTERM and SIGHUP included (pyinfra is
stopped first and the locks released). The exit code comes from the hosts' outcomes
(ai_deploy.rollout.exitcodes); notifications and the job summary come last and never change it.
A rollback or a restart checks the settings only (no artifact) and is the same rollout, each
host to its previous (or the named) release, or its current one restarted."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

from ai_deploy.artifact.build import ArtifactError
from ai_deploy.artifact.check import check_artifact
from ai_deploy.artifact.checksum import check_sidecar
from ai_deploy.ci.connect.access import open_access
from ai_deploy.ci.context import Run
from ai_deploy.ci.fleet import fleet_phase, print_json, table_message
from ai_deploy.ci.options import SETTINGS_PROBE_HOST, DeployOptions, PhaseFailed
from ai_deploy.ci.settings_probe import check_settings, read_settings
from ai_deploy.gcp import Terminated, raise_on_termination
from ai_deploy.inventory import RemoteError, resolve_inventory
from ai_deploy.report import output as ci_output
from ai_deploy.report.notify import DeployEvent, Outcome, notify
from ai_deploy.report.secrets import mask_secret_like, mask_secrets
from ai_deploy.rollout import exitcodes


def _say(message: str) -> None:
    print(message, flush=True)


def run_deploy(opts: DeployOptions, env: Mapping[str, str] | None = None) -> int:
    """The whole CI deploy (or rollback, or restart: `opts.action`); returns the exit code (see
    ai_deploy.rollout.exitcodes). With --json, everything it prints goes to stderr and stdout
    holds the result as JSON alone."""
    run = Run(opts, dict(os.environ if env is None else env), ci_output.Phases())
    if not opts.json:
        return _run(run)
    real = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        code, message = _run(run), run.final_message
    print_json(run, code, message, real)
    return code


def _run(run: Run) -> int:
    started = time.monotonic()
    outcome, message, code = Outcome.FAILURE, "", exitcodes.EXIT_OK
    title: str | None = None  # of the ::error annotation; None when nothing failed
    try:
        with raise_on_termination():
            code, message = _phases(run)
        outcome = {
            exitcodes.EXIT_OK: Outcome.SUCCESS,
            exitcodes.EXIT_SWITCHED_BACK: Outcome.ROLLBACK,
        }.get(code, Outcome.FAILURE)
        if outcome is not Outcome.SUCCESS:
            title = f"{run.opts.action} failed (exit {code})"
    except PhaseFailed as exc:
        message = str(exc)
        code = exitcodes.PHASE_EXIT.get(exc.phase, exitcodes.EXIT_UNEXPECTED)
        title = f"{run.opts.action} failed in phase {exc.phase}"
    except Terminated as exc:
        message = f"{exc}; cleanup ran (any rule or key it could not remove is named above)"
        code = exc.exit_code
        title = f"{run.opts.action} stopped"
    except KeyboardInterrupt:
        message = "interrupted; cleanup ran (a rule or key it could not remove is named above)"
        code = 130
        title = f"{run.opts.action} stopped"
    except Exception as exc:
        message = f"unexpected error: {type(exc).__name__}: {exc}"
        code = exitcodes.EXIT_UNEXPECTED
        title = f"{run.opts.action} stopped"
    _report(run, outcome, message, time.monotonic() - started, error_title=title)
    run.final_message = message
    return code


def _report(
    run: Run, outcome: Outcome, message: str, duration: float, *, error_title: str | None = None
) -> None:
    """The ::error annotation (when ERROR_TITLE; the error said once, without the rollout's
    table, printed already), notifications and the job summary (the table under MESSAGE), and
    the closing lines. Anything key- or token-like in MESSAGE is masked (::add-mask::) before
    anything is printed, and only the redacted text goes to the log, the webhooks and the
    summary."""
    said = mask_secret_like(message, run.environ)
    message = mask_secret_like(table_message(run, said), run.environ)
    if error_title is not None:
        ci_output.error(said, title=error_title, env=run.environ)
    failed = None if outcome is Outcome.SUCCESS else (run.phases.failed or "health")
    event = DeployEvent(
        outcome=outcome,
        service=run.settings.app_name if run.settings else DeployEvent.service,
        release=run.release,
        hosts=run.hosts,
        duration_s=duration,
        failed_phase=failed,
        message=message,
        run_url=ci_output.run_url(run.environ),
        action=run.opts.action,
    )
    quiet = run.opts.preview  # nothing happened: nobody is told
    if not quiet:
        for result in notify(event, env=run.environ):
            state = "sent" if result.ok else f"failed ({result.error or result.status})"
            _say(f"notification to {result.notifier}: {state}")
    if not run.opts.plan:
        ci_output.write_step_summary(event, run.phases.durations, env=run.environ)
    if quiet:
        what = "plan" if run.opts.plan else "dry run"
        ended = "finished" if outcome is Outcome.SUCCESS else "failed"
        _say(f"{what} {ended} in {duration:.1f} s")
        return
    for line in ci_output.closing_lines(event, run.phases.durations):
        _say(line)


def _phases(run: Run) -> tuple[int, str]:
    """One list of steps for every target kind: check → targets and access (all undone on
    every way out) → the rollout, which holds every host's lock from before its first change
    to after its last switch-back and checks each host from outside → its outcome."""
    check_artifact_phase(run)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="ai-deploy-ssh-") as tmp:
        open_access(run, stack, Path(tmp))
        return fleet_phase(run)


def check_artifact_phase(run: Run) -> None:
    """The settings (and, for a deploy, the artifact) checked before anything is opened."""
    if run.opts.action != "deploy":  # a rollback or a restart: the settings alone
        _check_settings(run)
        run.release = run.opts.rollback_to or (
            "previous" if run.opts.action == "rollback" else "current"
        )
        return
    with run.phases.phase("artifact", "Check the artifact and the settings"):
        _check_settings(run)
        assert run.settings is not None
        try:
            art = check_artifact(
                run.opts.artifact,
                run.settings.app_module,
                run.settings.limits,
                models_allow_http=run.settings.models_allow_http,
            )
        except ArtifactError as exc:
            raise PhaseFailed("artifact", str(exc)) from exc
        try:
            said = check_sidecar(run.opts.artifact, art.sha256, run.environ)
        except ArtifactError as exc:
            raise PhaseFailed("artifact", str(exc)) from exc
        run.release, run.lock_hash = art.release_id, art.lock_hash
        run.model_sizes = {f.sha256: f.size for m in art.models for f in m.files}
        _say(f"release {run.release} ({art.members} members, sha256 {art.sha256[:16]}...; {said})")


def _check_settings(run: Run) -> None:
    try:
        run.inventory = resolve_inventory(run.opts.inventory)
    except RemoteError as exc:
        raise PhaseFailed("config", str(exc)) from exc
    run.opts.check_access_settings()
    check_settings(run.opts.data, run.environ, Path.cwd())
    probe = run.opts.host or SETTINGS_PROBE_HOST
    run.settings = read_settings(run.inventory, run.opts.data, run.environ, probe)
    mask_secrets(run.settings.env_file, run.environ)
