"""`ai-deploy restart`: restart the current release on each host, one host at a time, behind the
same gate as a deploy (restart, health check, revisions.log line `restart`), through the
deploy's engine: the same targets and access, every host's lock held for the whole run, each
host checked from outside before the next. A host where the release does not come back healthy
stops the run: the hosts after it are left as they are. It ends with the same report as a
deploy: the phase times and one summary."""

from __future__ import annotations

import argparse
from typing import Any

from ai_deploy.commands.rolloutverb import add_targets, run_verb


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "restart",
        help="restart the current release behind the health gate, one host at a time",
        description="Restart the service on each host in turn through the deploy's gate "
        "(every host's lock held for the whole run, restart, health check from the host and "
        "from outside, a `restart` line in revisions.log). A host that does not come back "
        "healthy stops the run; exit codes as for deploy (14, 15, 16).",
    )
    add_targets(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_verb(args, "restart")
