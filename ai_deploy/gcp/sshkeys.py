"""SSH access to the VM without a long-lived key, the way `gcloud compute ssh` gets it.

`ephemeral_ssh_key()` makes a fresh ed25519 key pair per run in a private temporary directory
and authorizes it in one of three modes:

- ``metadata`` (default): an instance metadata `ssh-keys` entry
  ``USER:ssh-ed25519 AAAA... google-ssh {"userName":"USER","expireOn":"<RFC3339 UTC>"}``,
  written with the metadata fingerprint; the guest agent creates USER (with sudo) and drops
  the key once expireOn passes, so even a killed run leaves nothing usable behind;
- ``oslogin``: the public key is imported into the OS Login profile of the calling service
  account (with an expiry) and the login name comes from that profile;
- ``provided``: a pre-provisioned private key (AI_DEPLOY_SSH_PRIVATE_KEY, its content or a
  path) that the host already trusts; nothing is changed in GCP.

On the way out (normal exit, exception, SIGINT/SIGTERM) the entry or OS Login key is removed
again and the temporary directory, with the private key, is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials

from ai_deploy.gcp import GcpError, Terminated, compute, deferred_termination, raise_on_termination

logger = logging.getLogger(__name__)

SSH_MODE_ENV = "AI_DEPLOY_SSH_MODE"
SSH_USER_ENV = "AI_DEPLOY_SSH_USER"
SSH_PRIVATE_KEY_ENV = "AI_DEPLOY_SSH_PRIVATE_KEY"
SSH_KEY_TTL_ENV = "AI_DEPLOY_SSH_KEY_TTL_MINUTES"
OSLOGIN_USER_ENV = "AI_DEPLOY_OSLOGIN_USER"
OSLOGIN_ENDPOINT_ENV = "AI_DEPLOY_OSLOGIN_ENDPOINT"
DEFAULT_OSLOGIN_ENDPOINT = "https://oslogin.googleapis.com"
MODES = ("metadata", "oslogin", "provided")
DEFAULT_SSH_USER = "ai-deploy"
DEFAULT_KEY_TTL = timedelta(hours=1)
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_TRUE = ("true", "1", "yes", "y", "on")
_HTTP_TIMEOUT = 60.0


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


def rfc3339_utc(moment: datetime) -> str:
    """MOMENT in UTC as `YYYY-MM-DDTHH:MM:SSZ` (what the guest agent parses as RFC 3339)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ssh_keys_entry(user: str, public_key: str, expire_on: datetime) -> str:
    """The `ssh-keys` metadata line gcloud writes for an expiring key:
    ``USER:TYPE BLOB google-ssh {"userName":"USER","expireOn":"..."}`` (no comment kept)."""
    parts = public_key.split()
    if len(parts) < 2:
        raise SshKeyError(f"not an OpenSSH public key: {public_key[:40]!r}")
    stamp = json.dumps(
        {"userName": user, "expireOn": rfc3339_utc(expire_on)}, separators=(",", ":")
    )
    return f"{user}:{parts[0]} {parts[1]} google-ssh {stamp}"


def entry_expiry(line: str) -> datetime | None:
    """The expireOn of a `google-ssh` metadata line, or None when it has none we can read."""
    _, _, key = line.strip().partition(":")
    fields = key.split(" ", 3)
    if len(fields) < 4 or fields[2] != "google-ssh":
        return None
    try:
        stamp = json.loads(fields[3]).get("expireOn", "")
    except (ValueError, AttributeError):
        return None
    if not isinstance(stamp, str):
        return None
    text = stamp.strip()
    if re.fullmatch(r".*[+-]\d{4}", text):  # gcloud's +0000 style
        text = text[:-2] + ":" + text[-2:]
    return compute.parse_timestamp(text)


def _entry_user_and_blob(line: str) -> tuple[str, str | None]:
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


def _write_provided_key(directory: Path, value: str) -> tuple[Path, str]:
    """Write the pre-provisioned key (content, or a path to read) as DIRECTORY/id_provided
    with mode 0600 and return it with its public key."""
    text = value
    if "PRIVATE KEY" not in value:
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


def oslogin_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The OS Login API base URL: AI_DEPLOY_OSLOGIN_ENDPOINT, else the real one."""
    env = os.environ if environ is None else environ
    return (env.get(OSLOGIN_ENDPOINT_ENV) or DEFAULT_OSLOGIN_ENDPOINT).strip().rstrip("/")


def _oslogin_call(
    credentials: Credentials, method: str, path: str, **kwargs: Any
) -> dict[str, Any]:
    from google.auth.transport.requests import AuthorizedSession

    session = AuthorizedSession(credentials)
    try:
        response = session.request(
            method, f"{oslogin_endpoint()}/v1/{path}", timeout=_HTTP_TIMEOUT, **kwargs
        )
    finally:
        session.close()
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = {}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise api_exceptions.from_http_status(
            response.status_code,
            error.get("message") or response.text[:300],
            errors=error.get("errors", []),
            response=response,
        )
    return body if isinstance(body, dict) else {}


def _grant_oslogin(
    credentials: Credentials,
    project: str,
    email: str,
    public_key: str,
    expires_at: datetime,
) -> tuple[str, str]:
    """Import PUBLIC_KEY into EMAIL's OS Login profile; returns (posix username, fingerprint)."""
    usec = int(expires_at.timestamp() * 1_000_000)
    try:
        body = _oslogin_call(
            credentials,
            "POST",
            f"users/{email}:importSshPublicKey",
            params={"projectId": project},
            json={"key": public_key, "expirationTimeUsec": str(usec)},
        )
    except api_exceptions.GoogleAPICallError as exc:
        raise SshKeyError(
            f"OS Login refused to import the key for {email} ({exc.message}): the account "
            "needs roles/compute.osAdminLogin (or osLogin) on the project, and the OS Login "
            "API must be enabled"
        ) from exc
    profile = body.get("loginProfile") or {}
    blob = public_key.split()[1]
    fingerprint = next(
        (
            fp
            for fp, record in (profile.get("sshPublicKeys") or {}).items()
            if blob in str(record.get("key", "")).split()
        ),
        None,
    )
    accounts = profile.get("posixAccounts") or []
    account = next((a for a in accounts if a.get("accountId") == project), None) or next(
        (a for a in accounts if a.get("primary")), None
    )
    if fingerprint is None or account is None or not account.get("username"):
        raise SshKeyError(
            f"OS Login profile of {email} has no POSIX account for project {project} or lacks "
            "the imported key: check that OS Login is enabled for the project"
        )
    return str(account["username"]), fingerprint


def _find_oslogin_fingerprint(credentials: Credentials, email: str, blob: str) -> str | None:
    """The fingerprint OS Login gave the key with BLOB, or None when the profile lacks it."""
    profile = _oslogin_call(credentials, "GET", f"users/{email}/loginProfile")
    for fingerprint, record in (profile.get("sshPublicKeys") or {}).items():
        if blob in str(record.get("key", "")).split():
            return str(fingerprint)
    return None


def _revoke_oslogin(credentials: Credentials, email: str, fingerprint: str) -> None:
    try:
        _oslogin_call(credentials, "DELETE", f"users/{email}/sshPublicKeys/{fingerprint}")
    except api_exceptions.NotFound:
        return


def _metadata_error(
    exc: api_exceptions.GoogleAPICallError, action: str, project: str, zone: str, instance: str
) -> SshKeyError:
    if isinstance(exc, api_exceptions.NotFound):
        return SshKeyError(
            f"instance {instance} not found in zone {zone} of project {project}: check "
            "GCP_INSTANCE, GCP_ZONE and GCP_PROJECT_ID"
        )
    if isinstance(exc, api_exceptions.Forbidden):
        return SshKeyError(
            f"permission denied to {action} on instance {instance}: the credentials need "
            "compute.instances.get and compute.instances.setMetadata "
            "(roles/compute.instanceAdmin.v1) and, when the VM runs as a service account, "
            f"iam.serviceAccounts.actAs on it (roles/iam.serviceAccountUser). Google said: "
            f"{exc.message}"
        )
    return SshKeyError(f"cannot {action} on instance {instance}: {exc.message}")


class _Grant:
    """One run's key: made, authorized, and taken back."""

    def __init__(
        self,
        credentials: Credentials,
        project: str,
        zone: str,
        instance: str,
        settings: SshSettings,
        principal: str | None,
        timeout: float,
    ) -> None:
        self.credentials = credentials
        self.project = project
        self.zone = zone
        self.instance = instance
        self.settings = settings
        self.principal = principal
        self.timeout = timeout
        self.directory: Path | None = None
        self.blob: str | None = None
        self.entry_may_exist = False
        self.oslogin: tuple[str, str] | None = None  # (email, fingerprint)

    def open(self) -> SshAccess:
        s = self.settings
        self.directory = Path(tempfile.mkdtemp(prefix="ai-deploy-ssh-"))
        self.directory.chmod(0o700)
        if s.mode == "provided":
            assert s.provided_key is not None
            private, public = _write_provided_key(self.directory, s.provided_key)
            return SshAccess("provided", s.user, private, public, None)
        private, public = generate_key_pair(self.directory, comment=f"ai-deploy@{self.instance}")
        self.blob = public.split()[1]
        expires_at = datetime.now(timezone.utc).replace(microsecond=0) + s.ttl
        if s.mode == "oslogin":
            email = s.oslogin_user or self.principal
            if not email:
                raise SshKeyError(
                    "OS Login needs the service account the deploy runs as: give "
                    "google-github-actions/auth a service_account, or set "
                    f"{OSLOGIN_USER_ENV} to the account's email"
                )
            self.oslogin = (email, "")
            try:
                user, fingerprint = _grant_oslogin(
                    self.credentials, self.project, email, public, expires_at
                )
            except SshKeyError as exc:
                if isinstance(exc.__cause__, api_exceptions.ClientError):
                    self.oslogin = None  # refused outright: nothing was imported
                raise
            self.oslogin = (email, fingerprint)
            logger.info("OS Login key imported for %s (login %s)", email, user)
            return SshAccess(
                "oslogin", user, private, public, expires_at, oslogin_fingerprint=fingerprint
            )
        return self._open_metadata(private, public, expires_at)

    def _open_metadata(self, private: Path, public: str, expires_at: datetime) -> SshAccess:
        s = self.settings
        try:
            info = compute.get_instance(self.credentials, self.project, self.zone, self.instance)
        except api_exceptions.GoogleAPICallError as exc:
            raise _metadata_error(
                exc, "read metadata", self.project, self.zone, self.instance
            ) from exc
        if info.metadata.get("enable-oslogin", "").strip().lower() in _TRUE:
            raise SshKeyError(
                f"instance {self.instance} has OS Login enabled (metadata enable-oslogin), so "
                f"ssh-keys metadata is ignored there: set {SSH_MODE_ENV}=oslogin"
            )
        entry = ssh_keys_entry(s.user, public, expires_at)
        now = datetime.now(timezone.utc)

        def expired_leftover(line: str) -> bool:
            user, _ = _entry_user_and_blob(line)
            expiry = entry_expiry(line)
            return user == s.user and expiry is not None and expiry <= now

        self.entry_may_exist = True
        try:
            compute.add_ssh_key_entry(
                self.credentials,
                self.project,
                self.zone,
                self.instance,
                entry,
                drop=expired_leftover,
                timeout=self.timeout,
            )
        except api_exceptions.GoogleAPICallError as exc:
            raise _metadata_error(
                exc, "add the ssh-keys entry", self.project, self.zone, self.instance
            ) from exc
        logger.info(
            "ssh-keys entry for %s added to %s (expires %s)",
            s.user,
            self.instance,
            rfc3339_utc(expires_at),
        )
        return SshAccess("metadata", s.user, private, public, expires_at, metadata_entry=entry)

    def close(self, pending: BaseException | None) -> None:
        """Take the key back and delete the key directory; never raises over PENDING."""
        failure: str | None = None
        cause: BaseException | None = None
        try:
            if self.entry_may_exist and self.blob:
                blob = self.blob
                try:
                    compute.remove_ssh_key_entries(
                        self.credentials,
                        self.project,
                        self.zone,
                        self.instance,
                        lambda line: _entry_user_and_blob(line)[1] == blob,
                        timeout=self.timeout,
                    )
                    logger.info("ssh-keys entry removed from %s", self.instance)
                except (api_exceptions.GoogleAPIError, GcpError) as exc:
                    failure = (
                        f"could not remove the ssh-keys entry of {self.settings.user} from "
                        f"{self.instance} ({exc}); it expires by itself at its expireOn"
                    )
                    cause = exc
            if self.oslogin is not None:
                email, fingerprint = self.oslogin
                try:
                    if not fingerprint and self.blob:
                        # Interrupted before the import answered: look the key up.
                        fingerprint = (
                            _find_oslogin_fingerprint(self.credentials, email, self.blob) or ""
                        )
                    if fingerprint:
                        _revoke_oslogin(self.credentials, email, fingerprint)
                        logger.info("OS Login key removed from %s", email)
                except (api_exceptions.GoogleAPIError, GcpError) as exc:
                    failure = (
                        f"could not remove the OS Login key {fingerprint} of {email} ({exc}); "
                        "it expires by itself"
                    )
                    cause = exc
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
        if failure is not None:
            if pending is None:
                raise SshKeyError(failure) from cause
            logger.error("%s", failure)


@contextmanager
def ephemeral_ssh_key(
    credentials: Credentials,
    project: str,
    *,
    zone: str,
    instance: str,
    settings: SshSettings | None = None,
    principal: str | None = None,
    timeout: float = compute.DEFAULT_OPERATION_TIMEOUT,
) -> Iterator[SshAccess]:
    """SSH access to INSTANCE for the duration of the block (see the module docstring).

    + settings: mode, login user, key lifetime, provided key (default: `SshSettings()`,
      i.e. metadata mode as user ai-deploy, one hour)
    + principal: the service account the credentials act as (GcpSession.principal); the
      OS Login user unless settings.oslogin_user says otherwise

    Guarantees: on entry the key is authorized (metadata operation DONE, or OS Login key
    imported) and the private key is a 0600 file in a fresh 0700 directory outside the
    working tree. On exit, whatever the reason (exceptions, SIGINT/SIGTERM raised as
    `Terminated`), the entry or OS Login key is removed and the directory deleted; signals
    arriving during that cleanup are held until it is done.

        with ephemeral_ssh_key(creds, project, zone=zone, instance=name) as access:
            run_pyinfra(user=access.user, key=access.private_key_path)
    """
    settings = settings or SshSettings()
    settings.validate()
    grant = _Grant(credentials, project, zone, instance, settings, principal, timeout)
    with raise_on_termination():
        try:
            access = grant.open()
            yield access
        except BaseException as exc:
            with deferred_termination(redeliver=not isinstance(exc, Terminated)):
                grant.close(pending=exc)
            raise
        else:
            with deferred_termination():
                grant.close(pending=None)


__all__ = [
    "DEFAULT_KEY_TTL",
    "DEFAULT_OSLOGIN_ENDPOINT",
    "DEFAULT_SSH_USER",
    "MODES",
    "OSLOGIN_ENDPOINT_ENV",
    "OSLOGIN_USER_ENV",
    "SSH_KEY_TTL_ENV",
    "SSH_MODE_ENV",
    "SSH_PRIVATE_KEY_ENV",
    "SSH_USER_ENV",
    "SshAccess",
    "SshKeyError",
    "SshSettings",
    "entry_expiry",
    "ephemeral_ssh_key",
    "generate_key_pair",
    "oslogin_endpoint",
    "rfc3339_utc",
    "ssh_keys_entry",
    "validate_user",
]
