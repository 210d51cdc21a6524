"""`FirewallMirror`, the VPC firewall for a sandbox host: an nftables table of its own on this
machine's output path to the guest lets tcp:22 through only from the source ranges of the
fake's rules that allow tcp:22 to a tag the instance carries; everything else to :22 is
answered with a TCP reset. Imported through tests/gcp/flowkit.py."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

from ai_deploy.sandbox import network
from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp
from tests.gcp.flowkit_guest import SSH_PORT

# --- the firewall --------------------------------------------------------------------------


def _allows_tcp22(rule: Mapping[str, Any]) -> bool:
    for allowed in rule.get("allowed", []):
        proto = str(allowed.get("IPProtocol", "")).lower()
        if proto not in ("tcp", "all", "6"):
            continue
        ports = allowed.get("ports") or []
        if not ports:
            return True
        for spec in ports:
            low, _, high = str(spec).partition("-")
            if int(low) <= SSH_PORT <= int(high or low):
                return True
    return False


def ssh_source_ranges(
    firewalls: Mapping[str, Mapping[str, Any]], tags: list[str], network_name: str
) -> list[ipaddress.IPv4Network]:
    """Source ranges the rules let reach tcp:22 of an instance with TAGS on NETWORK_NAME:
    enabled INGRESS allow rules on that network whose targetTags meet TAGS (or are empty)."""
    ranges: list[ipaddress.IPv4Network] = []
    for rule in firewalls.values():
        if rule.get("disabled") or rule.get("direction", "INGRESS") != "INGRESS":
            continue
        if str(rule.get("network", "")).rstrip("/").rsplit("/", 1)[-1] != network_name:
            continue
        targets = rule.get("targetTags") or []
        if targets and not set(targets) & set(tags):
            continue
        if not _allows_tcp22(rule):
            continue
        for cidr in rule.get("sourceRanges", []):
            try:
                ranges.append(ipaddress.IPv4Network(cidr, strict=False))
            except ValueError:
                continue
    return list(ipaddress.collapse_addresses(ranges))


class FirewallMirror:
    """Enforce the fake's firewall rules for tcp:22 of one sandbox host, the fake's instance
    INSTANCE (by name; default the primary one).

    The table `ip ai_deploy_fwmirror_<index>` hooks this machine's output path: new
    connections to GUEST:22 pass only from an address in the set `allowed`, all others get a
    TCP reset (connection refused). Like GCP's firewall it is stateful: an established
    connection is not cut when its rule goes. The set is rewritten from the fake's state on
    every "firewalls" notification, synchronously, so a rule is enforced by the time its
    operation reports DONE and gone by the time the delete's operation does.

    SEEN_AS models a runner behind one NAT address: this machine reaches each host from that
    link's own address, but a VPC would see all of them come from SEEN_AS (the "what is my IP"
    answer). With it, the set holds this link's address exactly while a rule admits SEEN_AS.
    """

    def __init__(
        self, fake: FakeGcp, host: Host, instance: str | None = None, seen_as: str | None = None
    ) -> None:
        self.fake = fake
        self.host = host
        self.instance = instance
        self.seen_as = seen_as
        self.table = f"ai_deploy_fwmirror_{host.index}"
        self.history: list[tuple[float, tuple[str, ...]]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _nft(self, script: str) -> None:
        proc = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nft failed: {proc.stderr.strip()}\n{script}")

    def _delete_table(self) -> None:
        subprocess.run(
            ["nft", "delete", "table", "ip", self.table], capture_output=True, check=False
        )

    def install(self) -> FirewallMirror:
        guest = self.host.address
        self._delete_table()
        self._nft(
            f"""table ip {self.table} {{
  set allowed {{
    type ipv4_addr; flags interval; auto-merge;
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    ip daddr {guest} tcp dport {SSH_PORT} ct state established,related accept
    ip daddr {guest} tcp dport {SSH_PORT} ip saddr @allowed accept
    ip daddr {guest} tcp dport {SSH_PORT} reject with tcp reset
  }}
}}
"""
        )
        self.fake.listeners.append(self._listener)
        self.sync()
        return self

    def close(self) -> None:
        if self._listener in self.fake.listeners:
            self.fake.listeners.remove(self._listener)
        self._delete_table()

    def _listener(self, what: str) -> None:
        if what == "firewalls":
            self.sync()

    def sync(self) -> None:
        with self.fake.lock:
            firewalls = {k: dict(v) for k, v in self.fake.state.firewalls.items()}
            inst = self.fake.state.instance_named(self.instance)
            tags, network_name = list(inst.tags), inst.network
        ranges = ssh_source_ranges(firewalls, tags, network_name)
        if self.seen_as is not None:
            runner = ipaddress.IPv4Address(self.seen_as)
            link = ipaddress.IPv4Network(network.gateway_address(self.host.index))
            ranges = [link] if any(runner in r for r in ranges) else []
        elements = ", ".join(str(r) for r in ranges)
        script = f"flush set ip {self.table} allowed\n"
        if elements:
            script += f"add element ip {self.table} allowed {{ {elements} }}\n"
        with self._lock:
            try:
                self._nft(script)
            except Exception as exc:  # reported by the test, never raised into the fake
                self.errors.append(str(exc))
                return
            self.history.append((time.monotonic(), tuple(str(r) for r in ranges)))

    def allowed_now(self) -> list[str]:
        """The set as nftables holds it."""
        out = subprocess.run(
            ["nft", "-j", "list", "set", "ip", self.table, "allowed"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found: list[str] = []
        for item in json.loads(out).get("nftables", []):
            for elem in (item.get("set") or {}).get("elem", []):
                if isinstance(elem, str):
                    found.append(f"{elem}/32")
                elif "prefix" in elem:
                    found.append(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                elif "range" in elem:
                    found.append("-".join(elem["range"]))
        return found
