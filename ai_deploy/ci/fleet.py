"""The rollout step of every `ai-deploy deploy`: over the run's targets (one `--host`, one
GCP_INSTANCE, the instances of a label or filter) or the hosts of the inventory (or those
picked with --hosts). The rollout (ai_deploy.rollout) takes every lock, prints the plan, goes
canary first then batch by batch, and switches every host it switched back on any failure; a
single target is a rollout of one with no canary. `--plan` prints the plan and changes nothing;
`--dry-run` adds pyinfra's own dry diff per host."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from ai_deploy.ci.context import Run
from ai_deploy.report.secrets import mask_secret_like
from ai_deploy.rollout import exitcodes
from ai_deploy.rollout.fleetlock import FleetLockError
from ai_deploy.rollout.plan import PlanError
from ai_deploy.rollout.pyinfra_run import run_pyinfra_streamed
from ai_deploy.rollout.run import Health, Outcome, Rollout, plan_only, run_rollout
from ai_deploy.settings.ssh import Reach


def _say(message: str) -> None:
    print(message, flush=True)


def masked_say(run: Run) -> Callable[[str], None]:
    """How the rollout speaks in this run: anything key- or token-like in a line (a host's
    log tail may hold the app's secrets) masked (::add-mask::) and redacted before printing."""
    return lambda message: _say(mask_secret_like(message, run.environ))


def fleet_env(run: Run) -> dict[str, str]:
    """The environment of the pyinfra runs: the inventory names the hosts and how to reach
    them, or (targets named by the run) the targets by name, each at its endpoint, with the
    run's user, key and known_hosts (ai_deploy.settings.ssh.Reach); a key given to
    `ai-deploy` still goes through."""
    if not run.targets:
        return Reach(key=run.key).env(run.environ)
    return Reach(
        hosts=tuple(name for name, _, _ in run.targets),
        user=run.user,
        key=run.key,
        known_hosts=run.known_hosts,
        strict=run.strict_host_keys,
        endpoints={name: run.endpoint(name, address) for name, _, address in run.targets},
    ).env(run.environ)


def fleet_phase(run: Run) -> tuple[int, str]:
    """The rollout, or with --plan / --dry-run only its plan (and pyinfra's dry diff per host):
    a preview takes no lock and changes nothing on any host."""
    opts = run.opts
    health = Health(
        opts.health_attempts,
        opts.health_interval_s,
        opts.health_timeout_s,
        opts.health_url,
        addresses={name: address for name, _, address in run.targets},
    )
    rollout = Rollout(
        inventory=run.inventory,
        artifact=opts.artifact,
        release=run.release,
        lock_hash=run.lock_hash,
        data=list(opts.data),
        env=fleet_env(run),
        health=health,
        chosen=list(opts.hosts),
        canary=opts.canary,
        batch_size=opts.batch_size,
        wait_s=opts.batch_wait_s,
        say=masked_say(run),
        model_sizes=dict(run.model_sizes),
        action=opts.action,
    )
    title = "Plan the rollout (nothing changes)" if opts.preview else _TITLES[opts.action]
    with run.phases.phase(opts.action, title):
        try:
            keep = lambda o: setattr(run, "fleet", o)  # noqa: E731
            out = plan_only(rollout) if opts.preview else run_rollout(rollout, keep)
        except PlanError as exc:
            run.phases.fail(opts.action)
            return exitcodes.EXIT_CONFIG, str(exc)
        except FleetLockError as exc:
            run.phases.fail(opts.action)
            code = {
                "refused": exitcodes.EXIT_DEPLOY,
                "unreachable": exitcodes.EXIT_SSH,
                "unknown": exitcodes.EXIT_CONFIG,
            }
            why = "nothing changed on any host" if exc.kind != "error" else "nothing changed"
            return code.get(exc.kind, exitcodes.EXIT_UNEXPECTED), f"{exc}; {why}"
        run.fleet = out
        run.hosts[:] = [r.host for r in out.results]
        if opts.action != "deploy":  # the releases the hosts serve now, for the report
            run.release = ", ".join(sorted({r.after for r in out.results if r.after})) or "-"
        if out.failed_phase:  # a step that failed is this verb's phase
            run.phases.fail(opts.action if out.failed_phase == "deploy" else out.failed_phase)
    if opts.dry_run:
        return _dry_diff(run, rollout)
    if opts.plan:
        return exitcodes.EXIT_OK, "plan only: nothing changed"
    return out.code, out.message


_TITLES = {
    "deploy": "Roll out",
    "rollback": "Put the previous (or the named) release back in service, host by host",
    "restart": "Restart behind the health gate, one host at a time",
}


def _dry_diff(run: Run, rollout: Rollout) -> tuple[int, str]:
    """pyinfra's own dry run (`--dry`: facts read, nothing executed) over the rollout's hosts."""
    with run.phases.phase("deploy", "pyinfra's plan per host (nothing is changed)"):
        data = [f"artifact={rollout.artifact.resolve()}", *rollout.data]
        result = run_pyinfra_streamed(
            rollout.inventory, data, rollout.env, dry=True, limit=rollout.chosen
        )
        if result.returncode != 0:
            run.phases.fail("deploy")
            return exitcodes.EXIT_DEPLOY, f"pyinfra --dry failed (exit {result.returncode})"
    return exitcodes.EXIT_OK, "dry run: nothing changed"


def table_message(run: Run, message: str) -> str:
    """MESSAGE with the per-host table under it (for notifications and the job summary)."""
    from ai_deploy.rollout.report import render_table

    out: Outcome | None = run.fleet
    if out is None or run.opts.preview:
        return message
    return "\n".join([message, "", *render_table(out.results)]).strip()


def print_json(run: Run, code: int, message: str, stream: Any = None) -> None:
    """The rollout as data (--json): the plan and each host's result, on the real stdout."""
    out: Outcome | None = run.fleet
    doc = {
        "release": run.release,
        "exit_code": code,
        "message": mask_secret_like(message, run.environ),
        "plan": out.plan if out else [],
        "floor": out.floor if out else {},
        "hosts": [r.to_dict() for r in out.results] if out else [],
    }
    stream = stream or sys.stdout
    stream.write(json.dumps(doc, indent=2) + "\n")
    stream.flush()
