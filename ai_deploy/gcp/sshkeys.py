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

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials

from ai_deploy.gcp import GcpError, compute
from ai_deploy.gcp.grantpool import granted
from ai_deploy.gcp.keypair import (
    entry_expiry,
    entry_user_and_blob,
    generate_key_pair,
    rfc3339_utc,
    ssh_keys_entry,
    write_provided_key,
)
from ai_deploy.gcp.oslogin import (
    DEFAULT_OSLOGIN_ENDPOINT,
    OSLOGIN_ENDPOINT_ENV,
    find_oslogin_fingerprint,
    grant_oslogin,
    oslogin_endpoint,
    revoke_oslogin,
)
from ai_deploy.gcp.permissions import window_role_hint
from ai_deploy.gcp.runkeys import LeftoverKeys, RunMark
from ai_deploy.gcp.sshsettings import (
    DEFAULT_KEY_TTL,
    DEFAULT_SSH_USER,
    MODES,
    OSLOGIN_USER_ENV,
    SSH_KEY_TTL_ENV,
    SSH_MODE_ENV,
    SSH_PRIVATE_KEY_ENV,
    SSH_USER_ENV,
    SshAccess,
    SshKeyError,
    SshSettings,
    validate_user,
)

logger = logging.getLogger(__name__)

_TRUE = ("true", "1", "yes", "y", "on")
# How long closing waits for an accepted ssh-keys add that was not yet seen DONE.
SETTLE_TIMEOUT = 120.0


def _metadata_error(
    exc: api_exceptions.GoogleAPICallError,
    action: str,
    project: str,
    zone: str,
    instance: str,
    listed: bool = False,
) -> SshKeyError:
    if isinstance(exc, api_exceptions.NotFound) and listed:
        return SshKeyError(
            f"instance {instance} in zone {zone} was deleted after the instances were listed "
            "(404): no key was given to it; run the deploy again for the fleet as it is now"
        )
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
            f"{exc.message}\n{window_role_hint(project)}"
        )
    return SshKeyError(f"cannot {action} on instance {instance}: {exc.message}")


class KeyGrant:
    """One run's key on one instance: made, authorized, and taken back.

    + marks: the run's marks written into its ssh-keys line (see runkeys)
    + leftovers: which other lines are this deployment's keys of runs that are over; they go
      in the same writes as this run's add and removal
    + listed: INSTANCE came from a listing (a fleet): a 404 says it was deleted since
    """

    def __init__(
        self,
        credentials: Credentials,
        project: str,
        zone: str,
        instance: str,
        settings: SshSettings,
        principal: str | None,
        timeout: float,
        key_pair: tuple[Path, str] | None = None,
        *,
        marks: RunMark | None = None,
        leftovers: LeftoverKeys | None = None,
        listed: bool = False,
    ) -> None:
        self.marks = marks
        self.leftovers = leftovers
        self.listed = listed
        self.key_pair = key_pair  # (private key file, public line) shared by several grants
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
        # The accepted add's zone operation until it was seen DONE: closing waits for it, or
        # the removal would read the metadata before the entry lands and leave it there.
        self.add_operation: str | None = None
        self.oslogin: tuple[str, str] | None = None  # (email, fingerprint)

    def open(self) -> SshAccess:
        s = self.settings
        self.directory = Path(tempfile.mkdtemp(prefix="ai-deploy-ssh-"))
        self.directory.chmod(0o700)
        if s.mode == "provided":
            assert s.provided_key is not None
            private, public = write_provided_key(self.directory, s.provided_key)
            return SshAccess("provided", s.user, private, public, None)
        if self.key_pair is not None:
            private, public = self.key_pair
        else:
            private, public = generate_key_pair(
                self.directory, comment=f"ai-deploy@{self.instance}"
            )
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
                user, fingerprint = grant_oslogin(
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
                exc, "read metadata", self.project, self.zone, self.instance, self.listed
            ) from exc
        if info.status != "RUNNING":
            raise SshKeyError(
                f"instance {self.instance} in zone {self.zone} is {info.status}, not RUNNING "
                "(it changed since the instances were listed): no key was given to it; start "
                "it, or run the deploy again for the fleet as it is now"
            )
        if info.metadata.get("enable-oslogin", "").strip().lower() in _TRUE:
            raise SshKeyError(
                f"instance {self.instance} has OS Login enabled (metadata enable-oslogin), so "
                f"ssh-keys metadata is ignored there: set {SSH_MODE_ENV}=oslogin"
            )
        marks = self.marks.fields() if self.marks else None
        entry = ssh_keys_entry(s.user, public, expires_at, marks)
        now = datetime.now(timezone.utc)

        def expired_leftover(line: str) -> bool:
            user, _ = entry_user_and_blob(line)
            expiry = entry_expiry(line)
            expired = user == s.user and expiry is not None and expiry <= now
            return expired or self._leftover(line)

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
                on_started=self._add_started,
            )
        except api_exceptions.GoogleAPICallError as exc:
            raise _metadata_error(
                exc, "add the ssh-keys entry", self.project, self.zone, self.instance, self.listed
            ) from exc
        self.add_operation = None
        logger.info(
            "ssh-keys entry for %s added to %s (expires %s)",
            s.user,
            self.instance,
            rfc3339_utc(expires_at),
        )
        return SshAccess("metadata", s.user, private, public, expires_at, metadata_entry=entry)

    def _leftover(self, line: str) -> bool:
        """Whether LINE is this deployment's key of a run that is over (said when removed)."""
        why = self.leftovers.why(line, datetime.now(timezone.utc)) if self.leftovers else None
        if why is not None:
            user, _ = entry_user_and_blob(line)
            logger.warning("removing a leftover run key of %s on %s: %s", user, self.instance, why)
        return why is not None

    def _add_started(self, operation: str) -> None:
        self.add_operation = operation

    def _settle_add(self) -> None:
        """Wait (bounded) for an accepted add not yet seen DONE; best effort."""
        if self.add_operation is None:
            return
        try:
            compute.wait_zone_operation_named(
                self.credentials,
                self.project,
                self.zone,
                self.add_operation,
                what=f"add the ssh-keys entry on {self.instance}",
                timeout=min(self.timeout, SETTLE_TIMEOUT),
            )
        except (api_exceptions.GoogleAPIError, GcpError) as exc:
            logger.warning("waiting for the ssh-keys add before removing it: %s", exc)

    def take_back(self) -> str | None:
        """Take the key back and delete the key directory; never raises. Returns what is
        left (the instance or account, the key and why), or None when nothing is."""
        failure: str | None = None
        try:
            if self.entry_may_exist and self.blob:
                self._settle_add()
                blob = self.blob
                try:
                    compute.remove_ssh_key_entries(
                        self.credentials,
                        self.project,
                        self.zone,
                        self.instance,
                        lambda line: entry_user_and_blob(line)[1] == blob or self._leftover(line),
                        timeout=self.timeout,
                    )
                    logger.info("ssh-keys entry removed from %s", self.instance)
                except (api_exceptions.GoogleAPIError, GcpError) as exc:
                    failure = (
                        f"run key left on instance {self.instance}: the ssh-keys entry of "
                        f"{self.settings.user} ending {blob[-12:]} could not be removed ({exc}); "
                        "it expires by itself at its expireOn, and the next run removes it"
                    )
            if self.oslogin is not None:
                email, fingerprint = self.oslogin
                try:
                    if not fingerprint and self.blob:
                        # Interrupted before the import answered: look the key up.
                        fingerprint = (
                            find_oslogin_fingerprint(self.credentials, email, self.blob) or ""
                        )
                    if fingerprint:
                        revoke_oslogin(self.credentials, email, fingerprint)
                        logger.info("OS Login key removed from %s", email)
                except (api_exceptions.GoogleAPIError, GcpError) as exc:
                    failure = (
                        f"run key left: could not remove the OS Login key {fingerprint} of "
                        f"{email} ({exc}); it expires by itself"
                    )
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
        return failure


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
    key_pair: tuple[Path, str] | None = None,
) -> Iterator[SshAccess]:
    """SSH access to INSTANCE for the duration of the block (see the module docstring).

    + settings: mode, login user, key lifetime, provided key (default: `SshSettings()`,
      i.e. metadata mode as user ai-deploy, one hour)
    + key_pair: (private key file, public key line) to authorize instead of a fresh pair (one
      key for every instance of a rollout); the caller owns and removes its file
    + principal: the service account the credentials act as (GcpSession.principal); the
      OS Login user unless settings.oslogin_user says otherwise

    Guarantees: on entry the key is authorized (metadata operation DONE, or OS Login key
    imported) and the private key is a 0600 file in a fresh 0700 directory outside the
    working tree. On exit, whatever the reason (exceptions, SIGINT/SIGTERM raised as
    `Terminated`), the entry or OS Login key is removed and the directory deleted; signals
    arriving during that cleanup are held until it is done. The grant's calls run in a worker
    thread (see grantpool), so a signal never separates an accepted add from its answer: the
    add is waited for (bounded) before the removal.

        with ephemeral_ssh_key(creds, project, zone=zone, instance=name) as access:
            run_pyinfra(user=access.user, key=access.private_key_path)
    """
    settings = settings or SshSettings()
    settings.validate()
    grant = KeyGrant(credentials, project, zone, instance, settings, principal, timeout, key_pair)
    with granted([grant], workers=1) as (access,):
        yield access


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
