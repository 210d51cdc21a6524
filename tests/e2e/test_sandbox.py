"""Sandbox hosts behave like a fresh cloud VM and leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ai_deploy.artifact.build import build_artifact
from ai_deploy.host.uvbin import uv_binary
from ai_deploy.sandbox import hosts, image, network, record
from ai_deploy.sandbox.image import mounts_under
from tests.e2e.conftest import Sandbox, boot, require_root
from tests.e2e.deploykit import host_snapshot, main_pid, tree

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ai-server"


def test_host_is_a_fresh_vm_with_sudo_user(sandbox: Sandbox) -> None:
    assert sandbox.ssh("whoami").strip() == "ubuntu"
    assert sandbox.ssh("sudo -n id -u").strip() == "0"
    assert sandbox.ssh("systemctl is-system-running").strip() == "running"
    assert sandbox.ssh("hostname").strip() == sandbox.name
    # Like a cloud image: python3 but no pip and no venv module.
    assert sandbox.ssh("python3 -c 'import sys; print(sys.version_info[0])'").strip() == "3"
    assert sandbox.ssh("python3 -m pip --version", check=False) == ""


def test_inventory_names_the_host(sandbox: Sandbox) -> None:
    text = sandbox.inventory.read_text()
    assert sandbox.address in text
    assert sandbox.inventory.name == "sandbox.py"


def test_example_server_syncs_and_serves_inside_the_host(sandbox: Sandbox, tmp_path: Path) -> None:
    arch = sandbox.ssh("uname -m").strip()
    sandbox.put(uv_binary("0.13.9", arch), "/tmp/uv")
    artifact = build_artifact(EXAMPLE, tmp_path)
    sandbox.put(artifact, "/tmp/app.tar.gz")
    sandbox.ssh(
        "mkdir -p ~/app && tar -xzf /tmp/app.tar.gz -C ~/app && chmod +x /tmp/uv && cd ~/app && "
        "UV_PYTHON_DOWNLOADS=never /tmp/uv sync --frozen --no-install-project --python python3"
    )
    sandbox.sudo(
        "systemd-run --unit=probe-ai-server --working-directory=/home/ubuntu/app "
        "--setenv=MODEL_LOAD_SECONDS=0.5 --uid=ubuntu "
        "/home/ubuntu/app/.venv/bin/uvicorn main:app --host 0.0.0.0 --port 8000"
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            reply = requests.get(f"http://{sandbox.address}:8000/health", timeout=2)
            if reply.status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, sandbox.sudo("journalctl -u probe-ai-server -n 30")
        time.sleep(0.3)
    assert reply.json()["status"] == "ok"
    assert requests.get(f"http://{sandbox.address}:8000/predict", timeout=5).status_code == 200


def test_guests_reach_only_dns_and_web(sandbox: Sandbox) -> None:
    # Another guest's SSH and the machine's side of the link are both closed to a guest.
    probe = "timeout 3 bash -c 'echo > /dev/tcp/{}/22' && echo open || echo closed"
    gateway = network.gateway_address(sandbox.host.index)
    assert sandbox.ssh(probe.format(gateway)).strip() == "closed"


def test_down_leaves_nothing_of_the_host_behind() -> None:
    started, inventory = boot("down-check")
    host = started[0]
    ns = Path(network.netns_path(host.index))
    assert ns.exists() and host.running and mounts_under(host.directory)
    hosts.down([host.name])
    assert not ns.exists()
    assert not Path(f"/sys/class/net/{network.host_iface(host.index)}").exists()
    assert not host.directory.exists()
    assert not inventory.exists()
    assert not host.running
    assert not any(
        str(host.merged) in " ".join(record.cmdline(int(p.name)))
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
    )
    if not network.host_links():
        assert not network.table_exists()


def test_reading_a_host_that_cannot_be_reached_fails() -> None:
    """tree(), host_snapshot() and main_pid() fail on a host that is down instead of returning
    empty outputs that compare equal."""
    started, inventory = boot("unreachable")
    host = started[0]
    gone = Sandbox(host, inventory)
    try:
        assert tree(gone) == []  # reachable, no app yet: an empty tree, no error
        # The guest may close this very connection as it goes down: its exit says nothing.
        gone.sudo("systemctl --no-block poweroff", check=False, timeout=30)
        deadline = time.monotonic() + 60
        while host.running:
            assert time.monotonic() < deadline, "the host did not power off"
            time.sleep(0.2)
        # Its namespace stays until `down`, so ssh is refused there and goes nowhere else.
        assert Path(network.netns_path(host.index)).exists()
        for read in (tree, host_snapshot, main_pid):
            with pytest.raises(AssertionError, match="cannot reach sandbox host"):
                read(gone)
    finally:
        hosts.down([host.name])


def test_down_ends_a_container_whose_nspawn_was_killed() -> None:
    started, _ = boot("nspawn-killed")
    host = started[0]
    init = int((host.directory / "init.pid").read_text())
    nspawn = int((host.directory / "nspawn.pid").read_text())
    os.kill(host.supervisor_pid, signal.SIGKILL)
    os.kill(nspawn, signal.SIGKILL)
    time.sleep(0.5)
    assert Path(f"/proc/{init}").exists(), "the container outlived nspawn: down must end it"
    hosts.down([host.name])
    assert not Path(f"/proc/{init}").exists()
    assert not host.directory.exists()


def test_down_all_ends_a_host_whose_state_was_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state directory of its own, so `down --all` touches only this test's host.
    monkeypatch.setenv("AI_DEPLOY_STATE", str(tmp_path / "state"))
    started, _ = boot("state-lost")
    host = started[0]
    (host.directory / "meta.json").unlink()
    assert host.running
    netns = Path(network.netns_path(host.index))
    ours = netns.stat().st_ino
    hosts.down(None)
    assert not host.running
    assert not any(
        str(host.merged) in " ".join(record.cmdline(int(p.name)))
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
    )
    assert not mounts_under(host.directory) and not host.directory.exists()
    # Another test's host (another state directory) may take the freed index at once: what
    # must be gone is this host's namespace.
    assert not netns.exists() or netns.stat().st_ino != ours


@pytest.mark.slow
def test_killed_image_build_is_rebuilt_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL a base image build half-way, then `sandbox up` rebuilds and boots."""
    require_root()
    env = dict(
        os.environ, AI_DEPLOY_CACHE=str(tmp_path / "cache"), AI_DEPLOY_STATE=str(tmp_path / "state")
    )
    cmd = [sys.executable, "-m", "ai_deploy.cli", "sandbox", "up", "--name", "tkillbuild"]
    final_name = f"debian-bookworm-{image.RECIPE}"
    partial = tmp_path / "cache" / "images" / f"{final_name}.partial"
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (partial / "usr" / "bin").is_dir():
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.2)
        time.sleep(3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert partial.is_dir() and not partial.with_name(final_name).exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    try:
        assert done.returncode == 0, done.stderr
        assert "half-built" in done.stderr
        assert not partial.exists() and not mounts_under(partial)
        inventory = Path(done.stdout.strip().splitlines()[-1])
        assert inventory.is_file()
        monkeypatch.setenv("AI_DEPLOY_CACHE", env["AI_DEPLOY_CACHE"])
        monkeypatch.setenv("AI_DEPLOY_STATE", env["AI_DEPLOY_STATE"])
        (host,) = hosts.list_hosts()
        assert hosts.ssh(host.address, "systemctl is-system-running").strip() == "running"
    finally:
        subprocess.run(
            [sys.executable, "-m", "ai_deploy.cli", "sandbox", "down", "--all"],
            env=env,
            check=False,
        )
