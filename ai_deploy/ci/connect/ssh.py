"""SSH from the runner: a provided private key written for the run, how the run reaches the host
(directly, or through the IAP tunnel's local port; a known_hosts file with the pinned host keys),
and the wait until SSH with the run's key works (the guest agent adds keys asynchronously). A
host that presents a key other than the pinned ones stops the wait at once, naming both."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.ci.options import PhaseFailed
from ai_deploy.gcp.hostkeys import HostKey
from ai_deploy.settings.ssh import SSH_KEY_ENV, SSH_USER_ENV, is_key_text, key_variable

PRIVATE_KEY_ENV = SSH_KEY_ENV
DENIED = "Permission denied (publickey"
HOST_KEY_FAILED = "Host key verification failed"


@dataclass(frozen=True)
class SshAccess:
    """Where this run's SSH connects (HOST:PORT: the host itself, or the IAP tunnel's local
    port) and the `pinned` host keys (empty: first use is accepted)."""

    known_hosts: Path
    host: str
    port: int = 22
    pinned: tuple[HostKey, ...] = ()
    through_iap: bool = False

    @property
    def strict(self) -> str:
        return "yes" if self.pinned else "accept-new"

    @property
    def known_hosts_name(self) -> str:
        """The name ssh and paramiko look up in known_hosts for HOST:PORT."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def prepare_access(
    directory: Path,
    host: str,
    *,
    port: int = 22,
    pinned: Sequence[HostKey] = (),
    through_iap: bool = False,
) -> SshAccess:
    """Write DIRECTORY/known_hosts: the pinned keys for HOST:PORT, or nothing."""
    access = SshAccess(directory / "known_hosts", host, port, tuple(pinned), through_iap)
    access.known_hosts.write_text(
        "".join(k.known_hosts_line(access.known_hosts_name) + "\n" for k in pinned)
    )
    return access


@dataclass(frozen=True)
class Identity:
    """Who SSH logs in as outside GCP, with which key file, and where each was set (for
    messages: never the key's text)."""

    user: str
    key: Path
    user_source: str
    key_source: str

    @property
    def described(self) -> str:
        return f"user {self.user} ({self.user_source}), {self.key_source}"


def provided_identity(
    environ: Mapping[str, str],
    directory: Path,
    settings_user: str | None,
    settings_key: str | None,
    sources: Mapping[str, str],
    default_user: str,
) -> Identity:
    """The run's user and key for a host outside GCP: AI_DEPLOY_SSH_USER, else ssh_user of the
    settings (ai-deploy.toml's environment, the inventory), else DEFAULT_USER; the key in
    AI_DEPLOY_SSH_PRIVATE_KEY (its text, written to DIRECTORY/id 0600, or a path; the old
    AI_DEPLOY_SSH_KEY too), else ssh_key of the settings. PhaseFailed("config") naming the
    setting when there is no key or its file is missing."""
    user = environ.get(SSH_USER_ENV, "").strip()
    user_source = SSH_USER_ENV
    if not user:
        user = settings_user or default_user
        user_source = sources.get("ssh_user", "the settings") if settings_user else "default"
    given = key_variable(environ)
    if given is not None:
        name, value = given
        if is_key_text(value):
            key = directory / "id"
            key.touch(mode=0o600)
            key.write_text(value.replace("\r\n", "\n").strip() + "\n")
            return Identity(user, key, user_source, f"the key text in {name}")
        path, source = Path(value.strip()).expanduser().absolute(), name
    elif settings_key:
        path, source = Path(settings_key), f"ssh_key from {sources.get('ssh_key', 'the settings')}"
    else:
        raise PhaseFailed(
            "config",
            f"no SSH key for a host outside GCP: set ssh_key in ai-deploy.toml's "
            f"[environments.<env>] table, or {SSH_KEY_ENV} (the key's text or its path)",
        )
    if not path.is_file():
        raise PhaseFailed(
            "config",
            f"SSH key {path} ({source}) does not exist: {SSH_KEY_ENV} holds the key's text "
            "(-----BEGIN ... PRIVATE KEY-----) or the path of its file; paths in ai-deploy.toml "
            "are relative to its directory",
        )
    return Identity(user, path, user_source, f"key {path} ({source})")


def ssh_options(key: Path, known_hosts: Path, access: SshAccess | None = None) -> list[str]:
    port = ["-p", str(access.port)] if access is not None and access.port != 22 else []
    strict = access.strict if access is not None else "accept-new"
    return [
        *port,
        "-i",
        str(key),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        f"StrictHostKeyChecking={strict}",
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
    access: SshAccess | None = None,
    key_source: str = "",
) -> None:
    """Until `ssh USER@ADDRESS true` works with KEY. A key that was just authorized may be
    refused for a while; a provided key that is refused will stay refused, so that ends the
    wait at once, and so does a host key other than the pinned ones (nothing is sent then)."""
    deadline = time.monotonic() + wait_s
    target = access.host if access is not None else address
    attempt = 0
    while True:
        attempt += 1
        proc = subprocess.run(
            ["ssh", *ssh_options(key, known_hosts, access), f"{user}@{target}", "true"],
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
        if access is not None and access.pinned and HOST_KEY_FAILED in (proc.stderr or ""):
            raise PhaseFailed("ssh", host_key_mismatch(address, access))
        if DENIED in last and not key_is_new:
            raise PhaseFailed(
                "ssh",
                f"SSH to {user}@{address} refused the provided key ({last}); tried "
                f"{key_source or 'key ' + str(key)}: check that its public key is in "
                f"~{user}/.ssh/authorized_keys on the host and that the user is right (ssh_user "
                f"in ai-deploy.toml's environment, or {SSH_USER_ENV}; the key: ssh_key, or "
                f"{SSH_KEY_ENV})",
            )
        if time.monotonic() >= deadline:
            raise PhaseFailed(
                "ssh",
                f"SSH to {user}@{address} did not work within {wait_s:.0f} s ({last}); check "
                + (
                    "that IAP's standing rule matches the instance's tag, that gcloud can open "
                    "the tunnel (roles/iap.tunnelResourceAccessor) and that its guest agent runs"
                    if access is not None and access.through_iap
                    else "that the firewall rule's tag matches the instance and that its guest "
                    "agent runs"
                ),
            )
        if attempt == 1 or attempt % 5 == 0:
            say(f"waiting for SSH to {user}@{address} ({last})")
        time.sleep(2)


def presented_host_key(
    host: str, port: int, key_types: Sequence[str], timeout: float = 15
) -> HostKey:
    """The host key HOST:PORT presents when the client offers only KEY_TYPES (as OpenSSH does
    when known_hosts holds keys of those types); key exchange only, no authentication."""
    import socket

    import paramiko

    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        options = transport.get_security_options()
        wanted = set(key_types)
        if "ssh-rsa" in wanted:
            wanted |= {"rsa-sha2-512", "rsa-sha2-256"}
        offered = [t for t in options.key_types if t in wanted]
        if offered:
            options.key_types = offered
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return HostKey(key.get_name(), key.get_base64())
    finally:
        transport.close()


def host_key_mismatch(address: str, access: SshAccess) -> str:
    """The message for a host whose key is not among the pinned ones: what it presented (type
    and fingerprint, when it can be read) and what was pinned."""
    pinned = ", ".join(f"{k.key_type} {k.fingerprint}" for k in access.pinned)
    try:
        seen = presented_host_key(access.host, access.port, [k.key_type for k in access.pinned])
        presented = f"presented {seen.key_type} {seen.fingerprint}"
    except Exception as exc:  # the refusal stands; only the detail is missing
        presented = f"presented a key that could not be read back ({type(exc).__name__}: {exc})"
    return (
        f"host key of {address} does not match the key(s) pinned from the instance's guest "
        f"attributes: it {presented}; pinned {pinned}. Nothing was sent to it. A VM that was "
        "re-created publishes new keys on its next boot; otherwise something else answers on "
        "its port 22"
    )
