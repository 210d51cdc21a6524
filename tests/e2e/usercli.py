"""`ai-deploy` run as a user runs it against sandbox hosts: the sandbox's SSH user and key in
the environment, no colours, no CI or GCP variables from the outside."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ai_deploy.sandbox.paths import ssh_key_path


def user_env() -> dict[str, str]:
    """A user's environment for `ai-deploy` against sandbox hosts: the sandbox's SSH user and
    key, no colours, no CI or GCP variables from the outside."""
    env = dict(
        os.environ,
        AI_DEPLOY_SSH_USER="ubuntu",
        AI_DEPLOY_SSH_PRIVATE_KEY=ssh_key_path().read_text(),
        NO_COLOR="1",
        TERM="dumb",
    )
    for name in ("GITHUB_ACTIONS", "GCP_PROJECT_ID", "GCP_ZONE", "GCP_INSTANCE"):
        env.pop(name, None)
    return env


def run_as_user(argv: list[str], cwd: Path) -> tuple[int, str]:
    """ARGV (an `ai-deploy` command) run in CWD with user_env(): its exit status and output,
    stdout and stderr together, printed for the test's log."""
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=900,
    )
    print(f"$ ai-deploy {' '.join(argv[1:])}\n{proc.stdout}\n(exit {proc.returncode})")
    return proc.returncode, proc.stdout
