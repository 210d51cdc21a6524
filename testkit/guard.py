"""The only places the benchmark sends traffic to: loopback and sandbox guests (10.201.N.2).

Everything that opens a connection (the load, health polls, ssh/scp) asks `check_address`
first; names are refused, only literal addresses are accepted, so no lookup can redirect it.
"""

from __future__ import annotations

import ipaddress
import re

_SANDBOX = re.compile(r"^10\.201\.(\d{1,3})\.2$")
MAX_SANDBOX_INDEX = 250  # ai_deploy.sandbox.network.MAX_INDEX


class AddressRefused(ValueError):
    """The benchmark was asked to send traffic somewhere it must not."""


def address_allowed(address: str) -> bool:
    """True for a literal loopback address or a sandbox guest address 10.201.N.2 (1<=N<=250)."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    if addr.is_loopback:
        return True
    match = _SANDBOX.match(address)
    return bool(match) and 1 <= int(match.group(1)) <= MAX_SANDBOX_INDEX


def check_address(address: str) -> str:
    """Return ADDRESS when traffic to it is allowed, else raise AddressRefused."""
    if not address_allowed(address):
        raise AddressRefused(
            f"refusing to send traffic to {address!r}: the benchmark only targets loopback "
            "and sandbox guests (10.201.N.2), given as literal addresses"
        )
    return address
