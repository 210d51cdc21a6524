"""`ai-deploy pyinfra [ARGS...]`: pyinfra from the same installation, on the packaged inventory
(or -i INV, any inventory file) and deploy.py, run in the working directory so the app's
ai-deploy.toml (and `-e`) apply, its ssh_user and ssh_key included (every host's settings are
assembled before it is connected: ai_deploy.settings.pyinfra_main); `--data` paths are taken
from the working directory: the command a team runs from its repository, with or without a
checkout of ai-deploy."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from ai_deploy.commands.options import add_inventory
from ai_deploy.inventory import PYINFRA_MAIN, resolve_inventory
from ai_deploy.project import project_dir


def run_pyinfra_here(inventory: str | None, args: Sequence[str]) -> int:
    passed = list(args[1:] if args[:1] == ["--"] else args)
    cmd = [
        sys.executable,
        "-m",
        PYINFRA_MAIN,
        resolve_inventory(inventory),
        str(project_dir() / "deploy.py"),
        *passed,
    ]
    return subprocess.run(cmd, check=False).returncode


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "pyinfra",
        help="pyinfra INVENTORY deploy.py ARGS, from this installation, in this directory",
        description="Run pyinfra on the packaged inventory (or -i INV) and deploy.py, in the "
        "working directory, so the app's ai-deploy.toml and -e ENV apply. ARGS go to pyinfra: "
        "ai-deploy pyinfra -e staging -- --data artifact=dist/app.tar.gz",
    )
    add_inventory(parser)
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="for pyinfra")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_pyinfra_here(args.inventory, args.args)
