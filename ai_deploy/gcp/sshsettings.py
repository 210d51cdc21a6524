"""How the deploy gets SSH access, as settings: the AI_DEPLOY_SSH_* variables, their
validation, the error every part of the SSH key handling raises, and what a granted access
hands to pyinfra (`SshAccess`). See ai_deploy.gcp.sshkeys for the modes."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ai_deploy.gcp import GcpError
from ai_deploy.settings.ssh import SSH_KEY_ENV, SSH_USER_ENV

SSH_MODE_ENV = "AI_DEPLOY_SSH_MODE"
SSH_PRIVATE_KEY_ENV = SSH_KEY_ENV
SSH_KEY_TTL_ENV = "AI_DEPLOY_SSH_KEY_TTL_MINUTES"
OSLOGIN_USER_ENV = "AI_DEPLOY_OSLOGIN_USER"
MODES = ("metadata", "oslogin", "provided")
DEFAULT_SSH_USER = "ai-deploy"
DEFAULT_KEY_TTL = timedelta(hours=1)
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


class SshKeyError(GcpError):
    """The key could not be made, authorized or removed; the message says what to fix."""


@dataclass(frozen=True)
class SshSettings:
    """How to get SSH access; `from_env()` reads it from the AI_DEPLOY_SSH_* variables."""

    mode: str = "metadata"
    user: str = DEFAULT_SSH_USER
    ttl: timedelta = DEFAULT_KEY_TTL
    provided_key: str | None = field(default=None, repr=False)
    oslogin_user: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SshSettings:
        """AI_DEPLOY_SSH_MODE (metadata | oslogin | provided; default provided when
        AI_DEPLOY_SSH_PRIVATE_KEY is set, else metadata), AI_DEPLOY_SSH_USER,
        AI_DEPLOY_SSH_KEY_TTL_MINUTES, AI_DEPLOY_SSH_PRIVATE_KEY, AI_DEPLOY_OSLOGIN_USER.
        Raises SshKeyError naming the variable when a value is invalid."""
        env = os.environ if environ is None else environ
        provided = env.get(SSH_PRIVATE_KEY_ENV) or None
        mode = (env.get(SSH_MODE_ENV) or ("provided" if provided else "metadata")).strip().lower()
        ttl_text = env.get(SSH_KEY_TTL_ENV, "").strip()
        try:
            ttl = timedelta(minutes=int(ttl_text)) if ttl_text else DEFAULT_KEY_TTL
        except ValueError as exc:
            raise SshKeyError(f"{SSH_KEY_TTL_ENV}={ttl_text!r} is not a whole number") from exc
        settings = cls(
            mode=mode,
            user=(env.get(SSH_USER_ENV) or DEFAULT_SSH_USER).strip(),
            ttl=ttl,
            provided_key=provided,
            oslogin_user=(env.get(OSLOGIN_USER_ENV) or "").strip() or None,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise SshKeyError naming the setting when the combination cannot work."""
        if self.mode not in MODES:
            raise SshKeyError(f"{SSH_MODE_ENV}={self.mode!r}: choose one of {', '.join(MODES)}")
        if self.mode == "provided" and not self.provided_key:
            raise SshKeyError(f"{SSH_MODE_ENV}=provided needs {SSH_PRIVATE_KEY_ENV}")
        if self.mode != "oslogin":
            validate_user(self.user)
        if self.ttl <= timedelta(0):
            raise SshKeyError(f"{SSH_KEY_TTL_ENV} must be positive")


@dataclass(frozen=True)
class SshAccess:
    """What pyinfra needs to log in: user, private key file, and how access was granted."""

    mode: str
    user: str
    private_key_path: Path
    public_key: str
    expires_at: datetime | None
    metadata_entry: str | None = None
    oslogin_fingerprint: str | None = None


def validate_user(user: str) -> None:
    """Raise SshKeyError unless USER is a Linux login name the guest agent will create."""
    if not _USER_RE.fullmatch(user) or user == "root":
        raise SshKeyError(
            f"{SSH_USER_ENV}={user!r} is not a usable login name: lowercase letters, digits, "
            "'_', '-', '.', starting with a letter or '_', at most 32 characters, not root"
        )


__all__ = [
    "DEFAULT_KEY_TTL",
    "DEFAULT_SSH_USER",
    "MODES",
    "OSLOGIN_USER_ENV",
    "SSH_KEY_TTL_ENV",
    "SSH_MODE_ENV",
    "SSH_PRIVATE_KEY_ENV",
    "SSH_USER_ENV",
    "SshAccess",
    "SshKeyError",
    "SshSettings",
    "validate_user",
]
