"""How every command reaches its hosts over SSH, named once: the environment variables (one key
variable, AI_DEPLOY_SSH_PRIVATE_KEY, holding the key's text or its path), the known_hosts file
that host keys learnt on first use go to, and the words of an SSH failure (the user, where the
key came from, the setting to change).

The variables override ai-deploy.toml's `ssh_user` and `ssh_key`; the CI entry hands the
prod inventory its run's hosts, user, key, known_hosts and endpoints as one typed contract
(`Reach`), written and read only here."""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SSH_USER_ENV = "AI_DEPLOY_SSH_USER"
SSH_KEY_ENV = "AI_DEPLOY_SSH_PRIVATE_KEY"
OLD_SSH_KEY_ENV = "AI_DEPLOY_SSH_KEY"  # the old name (a path only); still read, said when used
KNOWN_HOSTS_ENV = "AI_DEPLOY_SSH_KNOWN_HOSTS"
STRICT_HOST_KEYS_ENV = "AI_DEPLOY_SSH_STRICT_HOST_KEYS"
ENDPOINTS_ENV = "AI_DEPLOY_SSH_ENDPOINTS"
HOSTS_ENV = "AI_DEPLOY_HOSTS"

USER = "ssh_user"
KEY = "ssh_key"
KNOWN_HOSTS = "ssh_known_hosts_file"
STRICT = "ssh_strict_host_key_checking"

# An OpenSSH or PEM private key starts with a line like this; anything else is a path.
_KEY_HEADER = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def is_key_text(value: str) -> bool:
    """VALUE holds a private key's text (a PEM or OpenSSH header), not the path of one."""
    return bool(_KEY_HEADER.search(value))


def known_hosts_path(environ: Mapping[str, str]) -> Path:
    """Where host keys learnt on first use are kept (never ~/.ssh/known_hosts):
    $XDG_CONFIG_HOME/ai-deploy/known_hosts, else ~/.config/ai-deploy/known_hosts."""
    base = environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base).expanduser() / "ai-deploy" / "known_hosts"


_written: dict[str, Path] = {}  # sha256 of a key's text -> the file it was written to
_key_dirs: list[Path] = []


def _key_dir() -> Path:
    if not _key_dirs:
        directory = Path(tempfile.mkdtemp(prefix="ai-deploy-key-"))  # 0700
        atexit.register(shutil.rmtree, directory, True)
        _key_dirs.append(directory)
    return _key_dirs[0]


def key_file(text: str) -> Path:
    """KEY TEXT written to a file only this user can read (0600, in a 0700 directory removed
    when the process ends), once per process and text; pyinfra and ssh read keys from files."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest not in _written:
        path = _key_dir() / f"id-{digest[:12]}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            # Secrets pasted into CI lose their final newline or gain CRs; OpenSSH rejects both.
            handle.write(text.replace("\r\n", "\n").strip() + "\n")
        _written[digest] = path
    return _written[digest]


_said: set[str] = set()


def say_once(message: str) -> None:
    """MESSAGE on stderr, once per process (each command may load its inventory twice)."""
    if message not in _said:
        _said.add(message)
        print(f"ai-deploy: {message}", file=sys.stderr, flush=True)


def key_variable(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable name, value) of the SSH key given in the environment, the current name first;
    the old name is accepted and said to be old."""
    value = environ.get(SSH_KEY_ENV, "")
    if value.strip():
        return SSH_KEY_ENV, value
    old = environ.get(OLD_SSH_KEY_ENV, "")
    if old.strip():
        say_once(
            f"{OLD_SSH_KEY_ENV} is the old name of {SSH_KEY_ENV} (a key's text or its path): "
            "rename it"
        )
        return OLD_SSH_KEY_ENV, old
    return None


def env_ssh_layers(environ: Mapping[str, str], cwd: Path) -> list[tuple[str, dict[str, Any]]]:
    """(variable, the SSH host data it gives) for each SSH variable that is set: ssh_user;
    ssh_key (a path: key text is written to a private file first; a relative path is taken
    from CWD); the known_hosts file and how strictly it is checked. A key given here is the
    only one tried (no agent, no ~/.ssh keys), so that a failure names it."""
    layers: list[tuple[str, dict[str, Any]]] = []
    user = environ.get(SSH_USER_ENV, "").strip()
    if user:
        layers.append((SSH_USER_ENV, {USER: user}))
    given = key_variable(environ)
    if given is not None:
        name, value = given
        if is_key_text(value):
            path = str(key_file(value))
        else:
            given_path = Path(value.strip()).expanduser()
            path = str(given_path if given_path.is_absolute() else cwd / given_path)
        layers.append((name, {KEY: path, "ssh_allow_agent": False, "ssh_look_for_keys": False}))
    known = environ.get(KNOWN_HOSTS_ENV, "").strip()
    if known:
        strict = environ.get(STRICT_HOST_KEYS_ENV, "").strip() or "accept-new"
        layers.append((KNOWN_HOSTS_ENV, {KNOWN_HOSTS: known, STRICT: strict}))
    return layers


def written_from_text(path: Any) -> bool:
    """PATH is a file this process wrote from a key's text (never to be shown)."""
    return str(path) in {str(p) for p in _written.values()}


def key_source(value: str | None, source: str) -> str:
    """How a failure names the key: its path and where it was set, or that none was."""
    if not value:
        return "no key set (ssh-agent and ~/.ssh keys tried)"
    if written_from_text(value):
        return f"the key text in {source}"
    return f"key {value} ({KEY} from {source})"


def ssh_failure_hint(user: Any, user_source: str, key: Any, key_source_name: str) -> str:
    """The part of an SSH failure that says who connected with what, and what to change."""
    who = f"as {user} ({USER} from {user_source})" if user else "as the local user (no ssh_user)"
    return (
        f"SSH {who} with {key_source(str(key) if key else None, key_source_name)}: set {USER} "
        f"and {KEY} in ai-deploy.toml's [environments.<env>] table, or {SSH_USER_ENV} and "
        f"{SSH_KEY_ENV}"
    )


class ReachError(ValueError):
    """The inventory contract in the environment cannot be read; the message names it."""


@dataclass(frozen=True)
class Reach:
    """The inventory contract: which hosts `ai-deploy` hands the prod inventory, and how each
    is reached (the run's user, key file, known_hosts and host key policy; NAME -> HOST:PORT
    endpoints, e.g. an IAP tunnel's local port). Written only by `env` and read only by
    `from_env`: the variables' names are this class's business. A field left None (or
    empty) is not handed: the inventory's own settings and the user's variables apply."""

    hosts: tuple[str, ...] = ()
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    strict: str | None = None
    endpoints: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """ENVIRON with this contract written into it; the old key variable is dropped when a
        key is given, so it is neither used nor reported."""
        env = dict(environ)
        given = {
            HOSTS_ENV: ",".join(self.hosts) or None,
            SSH_USER_ENV: self.user or None,
            SSH_KEY_ENV: str(self.key) if self.key is not None else None,
            KNOWN_HOSTS_ENV: str(self.known_hosts) if self.known_hosts is not None else None,
            STRICT_HOST_KEYS_ENV: self.strict,
            ENDPOINTS_ENV: ",".join(f"{n}={h}:{p}" for n, (h, p) in self.endpoints.items()) or None,
        }
        if self.key is not None:
            env.pop(OLD_SSH_KEY_ENV, None)
        env.update({name: value for name, value in given.items() if value is not None})
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Reach:
        """The contract as ENVIRON holds it (the inventory's side); ReachError naming the
        variable when an endpoint is not NAME=HOST:PORT."""
        hosts = tuple(a.strip() for a in environ.get(HOSTS_ENV, "").split(",") if a.strip())
        endpoints: dict[str, tuple[str, int]] = {}
        for item in environ.get(ENDPOINTS_ENV, "").split(","):
            name, _, endpoint = item.strip().partition("=")
            host, _, port = endpoint.rpartition(":")
            if not (name and host and port.isdigit()):
                if item.strip():
                    raise ReachError(f"{ENDPOINTS_ENV}: {item.strip()!r} is not NAME=HOST:PORT")
                continue
            endpoints[name] = (host, int(port))
        key = environ.get(SSH_KEY_ENV, "").strip()
        known = environ.get(KNOWN_HOSTS_ENV, "").strip()
        return cls(
            hosts=hosts,
            user=environ.get(SSH_USER_ENV, "").strip() or None,
            key=Path(key) if key and not is_key_text(key) else None,
            known_hosts=Path(known) if known else None,
            strict=environ.get(STRICT_HOST_KEYS_ENV, "").strip() or None,
            endpoints=endpoints,
        )
