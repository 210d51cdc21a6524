"""Pure parts of the sandbox: the guest firewall, names, the nspawn command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_deploy.sandbox import hosts, network
from ai_deploy.sandbox.image import SandboxError
from ai_deploy.sandbox.supervise import nspawn_command

pytestmark = pytest.mark.unit


def test_ruleset_forwards_only_dns_to_resolver_and_web_out_of_uplink() -> None:
    rules = network.ruleset("ens4", ["10.255.255.53"])
    forward = rules.split("chain forward")[1].split("chain input")[0]
    lines = [line.strip() for line in forward.splitlines() if line.strip()]
    accepts = [line for line in lines if line.startswith('iifname "aid-*"') and "accept" in line]
    assert accepts == [
        'iifname "aid-*" ip daddr { 10.255.255.53 } udp dport 53 accept',
        'iifname "aid-*" ip daddr { 10.255.255.53 } tcp dport 53 accept',
        'iifname "aid-*" oifname "ens4" tcp dport { 80, 443 } accept',
    ]
    # Everything else from a guest is dropped, right after the accepts.
    assert lines[lines.index(accepts[-1]) + 1] == 'iifname "aid-*" drop'
    assert 'ip saddr 10.201.0.0/16 oifname "ens4" masquerade' in rules


def test_addresses_are_per_host_slash_30() -> None:
    assert network.guest_address(7) == "10.201.7.2"
    assert network.gateway_address(7) == "10.201.7.1"
    assert network.host_iface(7) == "aid-7"


@pytest.mark.parametrize("bad", ["Web", "1host", "a_b", "x" * 40, ""])
def test_bad_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(SandboxError, match="lower-case letters"):
        hosts._names_for(1, bad, 1)


def test_names_for_several_hosts() -> None:
    assert hosts._names_for(3, "web", 1) == ["web-1", "web-2", "web-3"]
    assert hosts._names_for(1, "web", 1) == ["web"]
    assert hosts._names_for(2, None, 4) == ["sandbox-4", "sandbox-5"]


def test_nspawn_boots_without_registering_with_a_host_systemd() -> None:
    cmd = nspawn_command(Path("/m"), "h1", "/run/netns/ai-deploy-1")
    assert {"-b", "--register=no", "--keep-unit", "--resolv-conf=copy-host"} <= set(cmd)
    assert "--network-namespace-path=/run/netns/ai-deploy-1" in cmd


def test_inventory_puts_hosts_in_the_sandbox_group(tmp_path: Path) -> None:
    host = hosts.Host("web", 3, "10.201.3.2", 0, "")
    path = tmp_path / "web" / "sandbox.py"
    hosts.write_inventory(path, [host])
    scope: dict[str, object] = {}
    exec(path.read_text(), scope)
    (entry,) = scope["sandbox"]  # type: ignore[misc]
    assert entry[0] == "web"
    assert entry[1]["ssh_hostname"] == "10.201.3.2"
    assert entry[1]["ssh_user"] == "ubuntu"
