"""Shared fixtures: the network jail every test runs in, and marker bookkeeping."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator

import pytest

# Sandbox guests live in 10.201.0.0/16 (see ai_deploy.sandbox.network); nothing else but
# loopback may be reached from a test.
ALLOWED_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("10.201.0.0/16"),
)

_ENV_CLEARED = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "CLOUDSDK_CORE_PROJECT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


class NetworkJailError(OSError):
    """Raised when a test tries to reach an address outside loopback and sandbox guests."""


def address_allowed(host: str) -> bool:
    """True when HOST is a literal address inside the jail's allowed networks."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host in ("localhost",)
    return any(addr in net for net in ALLOWED_NETWORKS)


def _check_sockaddr(sockaddr: object) -> None:
    is_inet = isinstance(sockaddr, tuple) and sockaddr and isinstance(sockaddr[0], str)
    if is_inet and not address_allowed(sockaddr[0]):  # type: ignore[index]
        raise NetworkJailError(f"network jail: connection to {sockaddr[0]} refused in tests")
    # AF_UNIX paths (str/bytes) are local and allowed.


@pytest.fixture(autouse=True)
def network_jail(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let sockets reach loopback and sandbox guests only; clear cloud and proxy variables."""
    for name in _ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        _check_sockaddr(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        _check_sockaddr(address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: bytes, *args: object) -> int:
        _check_sockaddr(args[-1])
        return real_sendto(self, data, *args)  # type: ignore[arg-type]

    def getaddrinfo(host: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if host is not None:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if not address_allowed(name):
                raise NetworkJailError(f"network jail: name lookup of {name!r} refused in tests")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture(autouse=True, scope="session")
def own_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ai-deploy keeps the host keys it learns in $XDG_CONFIG_HOME/ai-deploy/known_hosts: the
    tests, and every command they start, keep theirs apart from the user's (sandbox addresses
    come back with other host keys when the base image is rebuilt)."""
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    yield
    if old is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = old


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test carries exactly one level marker, taken from its folder when not given."""
    for item in items:
        path = str(item.path)
        levels = {m.name for m in item.iter_markers()} & {"unit", "e2e", "gcp"}
        if not levels:
            for level in ("unit", "e2e", "gcp"):
                if f"{os.sep}tests{os.sep}{level}{os.sep}" in path:
                    item.add_marker(getattr(pytest.mark, level))
                    levels = {level}
                    break


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    """Print how many tests ran per level marker."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            keywords = getattr(report, "keywords", {})
            level = next((lv for lv in ("unit", "e2e", "gcp") if lv in keywords), "other")
            counts.setdefault(level, {}).setdefault(outcome, 0)
            counts[level][outcome] += 1
    terminalreporter.section("tests per level")
    for level in ("unit", "e2e", "gcp", "other"):
        if level in counts:
            parts = ", ".join(f"{n} {o}" for o, n in sorted(counts[level].items()))
            terminalreporter.write_line(f"{level}: {parts}")
