"""`ai-deploy rollback [RELEASE]`: the previous (or named) release back in service on each host,
behind the same health gate as a deploy. It prints as a deploy does (each host's events, or
pyinfra's whole stream with -v) and ends with the same closing lines: the phase times and one
summary; exit codes as for deploy (0, 2, 14, 15, 16)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ai_deploy.ci.options import SETTINGS_PROBE_HOST, PhaseFailed
from ai_deploy.ci.settings_probe import read_settings
from ai_deploy.commands.closing import print_closing
from ai_deploy.commands.options import add_inventory
from ai_deploy.commands.verbosity import add_verbose
from ai_deploy.inventory import resolve_inventory
from ai_deploy.report import output as ci_output
from ai_deploy.rollout import exitcodes
from ai_deploy.rollout.pyinfra_run import run_pyinfra_streamed


def rollback(inventory: str | None, release: str | None) -> int:
    started = time.monotonic()
    inv, env = resolve_inventory(inventory), dict(os.environ)
    try:
        service = read_settings(inv, [], env, SETTINGS_PROBE_HOST).app_name
    except PhaseFailed as exc:
        ci_output.error(str(exc), title="rollback stopped", env=env)
        return exitcodes.EXIT_CONFIG
    phases = ci_output.Phases(env=env)
    what = f"release {release}" if release else "the previous release"
    with phases.phase("rollback", f"Put {what} back in service"):
        result = run_pyinfra_streamed(inv, [f"rollback={release or 'previous'}"], env)
        tail = result.unexplained_tail()
        if tail:
            print("last lines of the pyinfra run:", *tail, sep="\n", flush=True)
    code = exitcodes.exit_for_outcomes(result.outcomes.values(), list(result.outcomes))
    if code == exitcodes.EXIT_OK and (result.returncode != 0 or not result.outcomes):
        code = exitcodes.EXIT_DEPLOY
    if code != exitcodes.EXIT_OK:
        phases.fail("rollback")
    outcomes = list(result.outcomes.values())
    print_closing("rollback", service, code, outcomes, phases, started, release=what)
    return code


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "rollback",
        help="put the previous (or the named) release back in service, behind the health gate",
        description="Put the previous (or the named) release back in service on each host, "
        "behind the deploy's health gate. Prints what changed and the gate's verdict per host "
        "(-v: pyinfra's whole stream), then the phase times and one summary; exit codes as for "
        "deploy (2, 14, 15, 16).",
    )
    parser.add_argument("release", nargs="?", metavar="RELEASE", help="default: previous")
    add_inventory(parser)
    add_verbose(parser)
    parser.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return rollback(args.inventory, args.release)
