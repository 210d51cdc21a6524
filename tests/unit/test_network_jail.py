"""The network jail every test runs in refuses anything but loopback and sandbox guests,
before a packet leaves (these tests send nothing)."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import address_allowed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("address", ["192.0.2.1", "10.0.0.1", "8.8.8.8", "10.202.1.2"])
def test_connect_outside_is_refused_before_any_packet(address: str) -> None:
    with (
        socket.socket() as s,
        pytest.raises(OSError, match=f"network jail: connection to {address}"),
    ):
        s.connect((address, 443))


def test_name_lookups_are_refused() -> None:
    with pytest.raises(OSError, match="network jail: name lookup"):
        socket.getaddrinfo("example.com", 443)


def test_udp_outside_is_refused() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
        pytest.raises(OSError, match="network jail"),
    ):
        s.sendto(b"x", ("192.0.2.53", 53))


def test_loopback_and_sandbox_guests_are_allowed() -> None:
    assert address_allowed("127.0.0.1") and address_allowed("::1")
    assert address_allowed("10.201.7.2")
    assert not address_allowed("10.200.7.2")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
