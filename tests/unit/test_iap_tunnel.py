"""The IAP tunnel's process for one run, with stand-in `gcloud` scripts: the local port read
from its output, clear errors when gcloud is missing, exits early or never reports a port, and
the process gone after the block on every exit (a signal-like exception included)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from ai_deploy.ci.connect.tunnel import iap_tunnel
from ai_deploy.ci.options import PhaseFailed

REPORTS_PORT = """\
import os, sys, time
open({pidfile!r}, "w").write(str(os.getpid()))
sys.stderr.write("Testing if tunnel connection works.\\n")
sys.stderr.write("Listening on port [41234].\\n")
sys.stderr.flush()
while True:
    print("connection accepted", flush=True)  # keeps writing: the pipe must be drained
    time.sleep(0.01)
"""
EXITS = """\
import sys
sys.stderr.write("ERROR: (gcloud.compute.start-iap-tunnel) Error while connecting [4033]: "
                 "'not authorized'.\\n")
sys.exit(1)
"""
SILENT = """\
import os, time
open({pidfile!r}, "w").write(str(os.getpid()))
time.sleep(600)
"""


def _gcloud(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "gcloud"
    script.write_text(f"#!{sys.executable}\n" + body.format(pidfile=str(tmp_path / "gcloud.pid")))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; iap_tunnel reaps its child, so none should remain.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _fails(env: dict[str, str], *, wait_s: float, instance: str = "vm-1") -> PhaseFailed:
    with (
        pytest.raises(PhaseFailed) as caught,
        iap_tunnel(instance, "zone-a", "proj", wait_s=wait_s, environ=env, say=lambda _: None),
    ):
        pass
    return caught.value


def test_the_reported_port_is_used_and_the_process_ends_with_the_block(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, REPORTS_PORT)
    said: list[str] = []
    with iap_tunnel("vm-1", "zone-a", "proj", wait_s=30, environ=env, say=said.append) as tunnel:
        pid = int((tmp_path / "gcloud.pid").read_text())
        assert _alive(pid)
        assert (tunnel.host, tunnel.port, tunnel.instance) == ("127.0.0.1", 41234, "vm-1")
        assert tunnel.known_hosts_name == "[127.0.0.1]:41234"
    assert not _alive(pid)
    assert said == ["IAP tunnel to vm-1:22 listens on 127.0.0.1:41234"]


def test_the_process_ends_when_the_run_is_interrupted(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, REPORTS_PORT)
    with (
        pytest.raises(KeyboardInterrupt),
        iap_tunnel("vm-1", "zone-a", "proj", wait_s=30, environ=env, say=lambda _: None),
    ):
        pid = int((tmp_path / "gcloud.pid").read_text())
        raise KeyboardInterrupt
    assert not _alive(pid)


def test_gcloud_missing_is_a_config_error_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    failed = _fails({"PATH": str(tmp_path / "empty")}, wait_s=5)
    assert failed.phase == "config"
    assert "gcloud is not on PATH" in str(failed)


def test_gcloud_that_exits_early_is_an_ssh_error_with_its_words(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, EXITS)
    failed = _fails(env, wait_s=30)
    message = str(failed)
    assert failed.phase == "ssh"
    assert "exited 1" in message and "not authorized" in message
    assert "roles/iap.tunnelResourceAccessor" in message


def test_gcloud_that_never_reports_a_port_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, SILENT)
    assert "did not report a local port within 1 s" in str(_fails(env, wait_s=1))
    assert not _alive(int((tmp_path / "gcloud.pid").read_text()))


def test_names_that_are_not_gcp_names_never_reach_gcloud(tmp_path: Path) -> None:
    env = _gcloud(tmp_path, SILENT)
    assert _fails(env, wait_s=1, instance="vm;touch /tmp/x").phase == "config"
    assert not (tmp_path / "gcloud.pid").exists()
