"""`ai-deploy exec -- CMD...`: CMD in the current release's directory on each host, as the
service user, with the service's .env, HOME and cache variables (the cache directory, as the
service has them), the release's venv first on PATH, VIRTUAL_ENV set and the app's own code
importable as the service imports it (ai_deploy.artifact.importpath). It runs as a
transient systemd unit (`systemd-run --pipe --wait`), so the .env is read by the same parser as
the service's EnvironmentFile= and wins over the cache variables as it does there; output
streams back as it comes."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ai_deploy.artifact.importpath import exec_pythonpath
from ai_deploy.commands.hostlines import HostLines
from ai_deploy.commands.options import add_inventory
from ai_deploy.commands.status import layout_of
from ai_deploy.host.cache import cache_environment
from ai_deploy.host.paths import Layout
from ai_deploy.host.stream import stream
from ai_deploy.inventory import connected

NO_RELEASE = 127  # the exit status when the host has no current release


def exec_script(
    layout: Layout, user: str, group: str, argv: Sequence[str], env: Mapping[str, str]
) -> str:
    """Shell (run as root) that runs ARGV in the release `current` names when it starts, with
    ENV (the service's cache variables) set. ARGV goes through `sh -c 'exec "$@"'` in the
    unit, so its command is found on the unit's PATH (the venv's bin first), not on
    systemd-run's own."""
    r = layout.root
    command = " ".join(shlex.quote(a) for a in argv)
    variables = "".join(f"-E {shlex.quote(f'{k}={v}')} " for k, v in env.items())
    return f"""
d=$(readlink -f {r}/current) && [ -d "$d" ] || {{
  echo "no current release under {r}" >&2; exit {NO_RELEASE}; }}
exec systemd-run --quiet --pipe --wait --collect --service-type=exec \\
  --uid={shlex.quote(user)} --gid={shlex.quote(group)} --working-directory="$d" \\
  -p EnvironmentFile=-{r}/.env \\
  -E VIRTUAL_ENV="$d/.venv" -E PATH="$d/.venv/bin:/usr/local/bin:/usr/bin:/bin" \\
  -E PYTHONUNBUFFERED=1 -E PYTHONPATH="{exec_pythonpath("$d")}" {variables}\\
  -- /bin/sh -c 'exec "$@"' sh {command}
"""


def strip_separator(argv: Sequence[str]) -> list[str]:
    """argparse's REMAINDER keeps the `--` that ends the options: drop it."""
    args = list(argv)
    return args[1:] if args[:1] == ["--"] else args


def run_exec(inventory: str | None, argv: Sequence[str]) -> int:
    command = strip_separator(argv)
    if not command:
        print(
            "ai-deploy: error: give the command after --, e.g. exec -- python -V", file=sys.stderr
        )
        return 2
    failed: list[int] = []
    with connected(inventory) as hosts:
        out = HostLines([h.name for h in hosts], prefix=len(hosts) > 1)
        for h in hosts:
            d = h.data
            layout = layout_of(h)
            env = cache_environment(layout, d.app_cache_env)
            script = exec_script(layout, str(d.app_user), str(d.app_group), command, env)
            code = stream(
                h, script, lambda t, n=h.name: out.out(n, t), lambda t, n=h.name: out.err(n, t)
            )
            if code != 0:
                failed.append(code)
                if len(hosts) > 1:
                    out.err(h.name, f"exit status {code}")
    return failed[0] if failed else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "exec",
        help="run CMD in the current release as the service user, with its .env, cache "
        "variables and venv",
        description="Run CMD on each host in the current release's directory, as app_user, "
        "with the .env the service reads, its HOME and cache variables (the cache directory), "
        "VIRTUAL_ENV set, the venv first on PATH and the app's own package importable as the "
        "service imports it (PYTHONPATH: the release, then its src/; a transient systemd unit). "
        "Output is prefixed HOST | when there are several hosts; the exit status is the first "
        "failing host's (0 when all succeed).",
        usage="ai-deploy exec [-h] [-i INV] -- CMD...",
    )
    add_inventory(parser)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD", help="after --")
    parser.set_defaults(func=_run, day2=True)


def _run(args: argparse.Namespace) -> int:
    return run_exec(args.inventory, args.cmd)
