"""SSH from the runner: a provided private key written for the run, and the wait until SSH with
the run's key works (the guest agent adds keys asynchronously)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ai_deploy.ci.options import PhaseFailed

PRIVATE_KEY_ENV = "AI_DEPLOY_SSH_PRIVATE_KEY"
DENIED = "Permission denied (publickey"


def provided_key(environ: Mapping[str, str], directory: Path) -> Path:
    """The key text in AI_DEPLOY_SSH_PRIVATE_KEY written to DIRECTORY/id (0600)."""
    text = environ.get(PRIVATE_KEY_ENV, "")
    if not text.strip():
        raise PhaseFailed("config", f"no GCP instance: set {PRIVATE_KEY_ENV} to the key's text")
    if "PRIVATE KEY-----" not in text:
        looks_like_path = "\n" not in text.strip() and ("/" in text or text.startswith("~"))
        hint = (
            f"it looks like a path; put the key's content in {PRIVATE_KEY_ENV} "
            f'(for example {PRIVATE_KEY_ENV}="$(cat {text.strip()})")'
            if looks_like_path
            else "expected an OpenSSH or PEM private key (-----BEGIN ... PRIVATE KEY-----)"
        )
        raise PhaseFailed("config", f"{PRIVATE_KEY_ENV} does not hold a private key: {hint}")
    key = directory / "id"
    key.touch(mode=0o600)
    key.write_text(text.replace("\r\n", "\n").rstrip("\n") + "\n")
    return key


def ssh_options(key: Path, known_hosts: Path) -> list[str]:
    return [
        "-i",
        str(key),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "LogLevel=ERROR",
    ]


def wait_for_ssh(
    address: str,
    user: str,
    key: Path,
    known_hosts: Path,
    wait_s: float,
    *,
    key_is_new: bool,
    say: Callable[[str], None] = print,
) -> None:
    """Until `ssh USER@ADDRESS true` works with KEY. A key that was just authorized may be
    refused for a while; a provided key that is refused will stay refused, so that ends the
    wait at once."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        attempt += 1
        proc = subprocess.run(
            ["ssh", *ssh_options(key, known_hosts), f"{user}@{address}", "true"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode == 0:
            say(f"SSH to {user}@{address} works (attempt {attempt})")
            return
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit {proc.returncode}"
        if DENIED in last and not key_is_new:
            raise PhaseFailed(
                "ssh",
                f"SSH to {user}@{address} refused the provided key ({last}); check that its "
                f"public key is in ~{user}/.ssh/authorized_keys on the host and that the user "
                "(AI_DEPLOY_SSH_USER) is right",
            )
        if time.monotonic() >= deadline:
            raise PhaseFailed(
                "ssh",
                f"SSH to {user}@{address} did not work within {wait_s:.0f} s ({last}); check "
                "that the firewall rule's tag matches the instance and that its guest agent runs",
            )
        if attempt == 1 or attempt % 5 == 0:
            say(f"waiting for SSH to {user}@{address} ({last})")
        time.sleep(2)
