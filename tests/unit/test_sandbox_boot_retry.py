"""A sandbox boot left degraded by early-boot systemd oneshots gets one more start of those
units; any other failed unit still fails the boot."""

from __future__ import annotations

import pytest

from ai_deploy.sandbox import hosts

pytestmark = pytest.mark.unit


def fake_host() -> hosts.Host:
    return hosts.Host(name="t-1", index=1, address="10.201.1.2", supervisor_pid=1, inventory="")


@pytest.mark.parametrize(
    ("failed", "after", "expected", "restarted"),
    [
        ("systemd-sysusers.service loaded failed failed Create System Users", "running",
         "running", True),
        ("systemd-remount-fs.service loaded failed failed Remount", "degraded", "degraded", True),
        ("ssh.service loaded failed failed OpenBSD Secure Shell", "running", "degraded", False),
        ("", "running", "degraded", False),
    ],
)  # fmt: skip
def test_only_early_boot_oneshots_are_started_again(
    monkeypatch: pytest.MonkeyPatch, failed: str, after: str, expected: str, restarted: bool
) -> None:
    ran: list[str] = []

    def ssh(address: str, command: str, *, check: bool = True, timeout: float = 0) -> str:
        ran.append(command)
        if command.startswith("systemctl --failed"):
            return failed + "\n"
        return after + "\n" if command == "systemctl is-system-running" else ""

    monkeypatch.setattr(hosts, "ssh", ssh)
    assert hosts._retry_failed_units(fake_host()) == expected
    assert any("systemctl restart" in c for c in ran) is restarted
