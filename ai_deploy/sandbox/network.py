"""The sandbox network: one network namespace and veth pair per host, and one nftables table
that lets guests reach the machine's DNS resolver and HTTP/HTTPS (package registries) only.

Host N uses 10.201.N.0/30: the machine's side is 10.201.N.1 (interface `aid-N`), the guest's
`eth0` is 10.201.N.2. The table `ip ai_deploy_sandbox` and net.ipv4.ip_forward are set up with
the first host and put back when the last host goes, machine-wide (whatever state directory
the hosts were made from), under one lock.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ai_deploy.sandbox.image import SandboxError
from ai_deploy.sandbox.locking import file_lock

NETWORK = "10.201.0.0/16"
TABLE = "ai_deploy_sandbox"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
MAX_INDEX = 250
RUN_DIR = Path("/run/ai-deploy")


def netns_name(index: int) -> str:
    return f"ai-deploy-{index}"


def host_iface(index: int) -> str:
    return f"aid-{index}"


def guest_address(index: int) -> str:
    return f"10.201.{index}.2"


def gateway_address(index: int) -> str:
    return f"10.201.{index}.1"


def _run(*cmd: str, check: bool = True, input_text: str | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input_text)
    if check and proc.returncode != 0:
        raise SandboxError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def default_route_iface() -> str:
    """The interface of this machine's default route (not assumed to be eth0)."""
    parts = _run("ip", "route", "show", "default").split()
    if "dev" not in parts:
        raise SandboxError("this machine has no default route: guests could not reach registries")
    return parts[parts.index("dev") + 1]


def resolvers() -> list[str]:
    """IPv4 nameservers of this machine (guests get a copy of its resolv.conf)."""
    found = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
            found.append(parts[1])
    return found


def ruleset(uplink: str, dns: list[str]) -> str:
    """The nftables table for the sandbox network (pure function, for tests)."""
    dns_set = ", ".join(dns) if dns else "127.0.0.1"
    return f"""table ip {TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {NETWORK} oifname "{uplink}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "aid-*" ip daddr {{ {dns_set} }} udp dport 53 accept
    iifname "aid-*" ip daddr {{ {dns_set} }} tcp dport 53 accept
    iifname "aid-*" oifname "{uplink}" tcp dport {{ 80, 443 }} accept
    iifname "aid-*" drop
    oifname "aid-*" ct state established,related accept
    oifname "aid-*" drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "aid-*" ct state established,related accept
    iifname "aid-*" drop
  }}
}}
"""


def table_exists() -> bool:
    found = subprocess.run(["nft", "list", "table", "ip", TABLE], capture_output=True)
    return found.returncode == 0


def _saved_forward() -> Path:
    return RUN_DIR / "ip_forward.saved"


def host_links() -> list[int]:
    """Indexes of every sandbox veth on this machine."""
    found = []
    for link in Path("/sys/class/net").glob("aid-*"):
        suffix = link.name.split("-")[-1]
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def _setup_shared() -> None:
    saved = _saved_forward()
    if not saved.exists():
        saved.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")
    if table_exists():
        _run("nft", "delete", "table", "ip", TABLE)
    _run("nft", "-f", "-", input_text=ruleset(default_route_iface(), resolvers()))


def _teardown_shared() -> None:
    if table_exists():
        _run("nft", "delete", "table", "ip", TABLE)
    saved = _saved_forward()
    if saved.exists():
        IP_FORWARD.write_text(saved.read_text())
        saved.unlink()


def attach_host(index: int) -> None:
    """Create host INDEX's namespace and link; the first host also sets up the shared parts."""
    with file_lock(RUN_DIR / "network.lock", "sandbox network change"):
        if not host_links() or not table_exists():
            _setup_shared()
        create_host_link(index)


def detach_host(index: int | None) -> None:
    """Remove host INDEX's link (None: none); the last host gone removes the shared parts."""
    with file_lock(RUN_DIR / "network.lock", "sandbox network change"):
        if index is not None:
            remove_host_link(index)
        if not host_links():
            _teardown_shared()


def create_host_link(index: int) -> None:
    """Create the namespace and the veth pair for host INDEX, guest side configured."""
    ns, iface = netns_name(index), host_iface(index)
    remove_host_link(index)
    _run("ip", "netns", "add", ns)
    _run("ip", "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _run("ip", "addr", "add", f"{gateway_address(index)}/30", "dev", iface)
    _run("ip", "link", "set", iface, "up")
    _run("ip", "-n", ns, "link", "set", "lo", "up")
    _run("ip", "-n", ns, "addr", "add", f"{guest_address(index)}/30", "dev", "eth0")
    _run("ip", "-n", ns, "link", "set", "eth0", "up")
    _run("ip", "-n", ns, "route", "add", "default", "via", gateway_address(index))


def remove_host_link(index: int) -> None:
    """Delete host INDEX's namespace and veth pair if present."""
    ns, iface = netns_name(index), host_iface(index)
    if Path(f"/sys/class/net/{iface}").exists():
        _run("ip", "link", "del", iface, check=False)
    if Path(f"/run/netns/{ns}").exists():
        _run("ip", "netns", "del", ns, check=False)


def netns_path(index: int) -> str:
    return f"/run/netns/{netns_name(index)}"
