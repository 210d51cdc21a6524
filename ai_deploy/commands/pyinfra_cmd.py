"""`ai-deploy pyinfra [ARGS...]`: pyinfra from the same installation, on the packaged inventory
and deploy.py, run in the working directory so the app's ai-deploy.toml (and `-e`) apply:
the command a team runs from its repository, with or without a checkout of ai-deploy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from ai_deploy.inventory import resolve_inventory
from ai_deploy.project import project_dir


def run_pyinfra_here(inventory: str | None, args: Sequence[str]) -> int:
    passed = list(args[1:] if args[:1] == ["--"] else args)
    cmd = [
        sys.executable,
        "-m",
        "pyinfra",
        resolve_inventory(inventory),
        str(project_dir() / "deploy.py"),
        *passed,
    ]
    return subprocess.run(cmd, check=False).returncode
