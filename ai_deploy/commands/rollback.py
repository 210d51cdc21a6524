"""`ai-deploy rollback [RELEASE]`: the previous (or named) release back in service on each host,
behind the same health gate as a deploy, through the deploy's engine: the same targets and
access, every host's lock held for the whole run, hosts step by step, each checked from outside,
a host that fails switched back to what it served before. It prints as a deploy does and ends
with the same report (closing lines, job summary, notifications); exit codes as for deploy."""

from __future__ import annotations

import argparse
from typing import Any

from ai_deploy.commands.rolloutverb import add_targets, run_verb


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "rollback",
        help="put the previous (or the named) release back in service, behind the health gate",
        description="Put the previous (or the named) release back in service on each host, "
        "behind the deploy's health gate, as a rollout: every host's lock held for the whole "
        "run, the hosts step by step, each checked from outside, a failure switching back the "
        "hosts this run moved. Prints what changed and the gate's verdict per host (-v: "
        "pyinfra's whole stream), then the phase times and one summary; exit codes as for "
        "deploy (2, 14, 15, 16).",
    )
    parser.add_argument("release", nargs="?", metavar="RELEASE", help="default: previous")
    add_targets(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_verb(args, "rollback", args.release)
