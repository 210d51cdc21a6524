"""The per-run key itself: an ed25519 pair made with ssh-keygen, or the pre-provisioned key
written to a 0600 file, and the `ssh-keys` metadata line that authorizes it until its
expireOn (the format gcloud writes and the guest agent reads)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from ai_deploy.gcp.operations import parse_timestamp
from ai_deploy.gcp.sshsettings import SSH_PRIVATE_KEY_ENV, SshKeyError
from ai_deploy.settings.ssh import is_key_text


def rfc3339_utc(moment: datetime) -> str:
    """MOMENT in UTC as `YYYY-MM-DDTHH:MM:SSZ` (what the guest agent parses as RFC 3339)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ssh_keys_entry(
    user: str, public_key: str, expire_on: datetime, marks: Mapping[str, str] | None = None
) -> str:
    """The `ssh-keys` metadata line gcloud writes for an expiring key:
    ``USER:TYPE BLOB google-ssh {"userName":"USER","expireOn":"..."}`` (no comment kept),
    with MARKS as more JSON fields after those two (the guest agent ignores them)."""
    parts = public_key.split()
    if len(parts) < 2:
        raise SshKeyError(f"not an OpenSSH public key: {public_key[:40]!r}")
    stamp = json.dumps(
        {"userName": user, "expireOn": rfc3339_utc(expire_on), **(marks or {})},
        separators=(",", ":"),
    )
    return f"{user}:{parts[0]} {parts[1]} google-ssh {stamp}"


def entry_stamp(line: str) -> dict[str, object]:
    """The JSON object of a `google-ssh` metadata line; empty when it has none we can read."""
    _, _, key = line.strip().partition(":")
    fields = key.split(" ", 3)
    if len(fields) < 4 or fields[2] != "google-ssh":
        return {}
    try:
        stamp = json.loads(fields[3])
    except ValueError:
        return {}
    return stamp if isinstance(stamp, dict) else {}


def entry_expiry(line: str) -> datetime | None:
    """The expireOn of a `google-ssh` metadata line, or None when it has none we can read."""
    stamp = entry_stamp(line).get("expireOn", "")
    if not isinstance(stamp, str):
        return None
    text = stamp.strip()
    if re.fullmatch(r".*[+-]\d{4}", text):  # gcloud's +0000 style
        text = text[:-2] + ":" + text[-2:]
    return parse_timestamp(text)


def entry_user_and_blob(line: str) -> tuple[str, str | None]:
    user, _, key = line.strip().partition(":")
    fields = key.split()
    return user, fields[1] if len(fields) > 1 else None


def generate_key_pair(directory: Path, *, comment: str = "ai-deploy") -> tuple[Path, str]:
    """Make an ed25519 key pair (no passphrase) in DIRECTORY with ssh-keygen.

    Returns (private key path, public key line). The private key file is mode 0600.
    """
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise SshKeyError("ssh-keygen not found: install the OpenSSH client (openssh-client)")
    private = directory / "id_ed25519"
    result = subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise SshKeyError(f"ssh-keygen failed: {result.stderr.strip() or result.returncode}")
    private.chmod(0o600)
    return private, Path(f"{private}.pub").read_text().strip()


def write_provided_key(directory: Path, value: str) -> tuple[Path, str]:
    """Write the pre-provisioned key (content, or a path to read) as DIRECTORY/id_provided
    with mode 0600 and return it with its public key."""
    text = value
    if not is_key_text(value):
        path = Path(value.strip()).expanduser()
        if not path.is_file():
            raise SshKeyError(
                f"{SSH_PRIVATE_KEY_ENV} is neither a private key (no 'PRIVATE KEY' header) nor "
                "the path of an existing file"
            )
        text = path.read_text()
    # Secrets pasted into CI lose their final newline or gain CRs; OpenSSH rejects both.
    text = text.replace("\r\n", "\n").strip() + "\n"
    private = directory / "id_provided"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise SshKeyError("ssh-keygen not found: install the OpenSSH client (openssh-client)")
    result = subprocess.run(
        [keygen, "-y", "-P", "", "-f", str(private)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise SshKeyError(
            f"{SSH_PRIVATE_KEY_ENV} is not a usable private key without a passphrase "
            f"(ssh-keygen: {result.stderr.strip()})"
        )
    return private, result.stdout.strip()


__all__ = [
    "entry_expiry",
    "entry_stamp",
    "entry_user_and_blob",
    "generate_key_pair",
    "rfc3339_utc",
    "ssh_keys_entry",
    "write_provided_key",
]
