"""Interrupted deploys on real sandbox hosts (issue 10, item 4): a deploy killed during the health
wait is finished or undone by the next one, and `ai-deploy deploy --no-gcp` stopped by SIGTERM
leaves no pyinfra running and no lock in the way of the next deploy, from another hostname too."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    assert_ok,
    build_variant,
    cli_env,
    deploy_command,
    read_host,
    run_deploy,
    serving_release,
    start_deploy,
)

pytestmark = pytest.mark.e2e

GATE_STARTED = "current -> releases/"  # said by the gate as the health wait begins


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interrupted")


def slow_start(seconds: float) -> Callable[[str], str]:
    def patch(text: str) -> str:
        line = 'MODEL_LOAD_SECONDS = float(os.environ.get("MODEL_LOAD_SECONDS", "2"))'
        return text.replace(line, f"MODEL_LOAD_SECONDS = {seconds}")

    return patch


def serve(sandbox: Sandbox, artifact: Artifact) -> None:
    assert_ok(run_deploy(sandbox.inventory, artifact.data))
    assert serving_release(sandbox.address) == artifact.release_id


def link(sandbox: Sandbox, name: str) -> str:
    target = read_host(sandbox, f"readlink {APP_ROOT}/{name} || true", name).strip()
    return target.rsplit("/", 1)[-1]


def recorded_healthy(sandbox: Sandbox, release: str) -> bool:
    out = read_host(sandbox, f"test -f {APP_ROOT}/healthy/{release} && echo yes || true", "ok")
    return out.strip() == "yes"


def lock_present(sandbox: Sandbox) -> bool:
    out = read_host(sandbox, f"test -e {APP_ROOT}/.deploy.lock && echo held || true", "lock")
    return out.strip() == "held"


def descendants(pid: int) -> set[int]:
    """Every process below PID (from /proc), now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_in_health_wait_then_same_deploy_runs_the_gate(
    sandbox: Sandbox, workdir: Path
) -> None:
    """Acceptance: SIGKILL of the deploy during the health wait, then the same deploy again:
    the gate runs and the release is verified; `previous` is a recorded-healthy release."""
    base = build_variant(workdir, "killed-base")
    serve(sandbox, base)
    slow = build_variant(workdir, "killed-slow", patch_main=slow_start(15))
    run = start_deploy(sandbox.inventory, slow.data)
    run.wait_for(GATE_STARTED, 300)
    time.sleep(2)
    run.kill()  # the whole process group: pyinfra dies mid health wait
    assert link(sandbox, "current") == slow.release_id  # switched, never verified
    assert not recorded_healthy(sandbox, slow.release_id)
    assert lock_present(sandbox)  # left by the killed run

    started = time.monotonic()
    again = run_deploy(sandbox.inventory, slow.data)
    out = assert_ok(again)
    assert "has not passed the gate" in out, out  # the plan says why it runs again
    assert "is no longer running" in out, out  # its dead lock taken over at once
    assert time.monotonic() - started < 120
    assert serving_release(sandbox.address) == slow.release_id
    assert recorded_healthy(sandbox, slow.release_id)
    previous = link(sandbox, "previous")
    assert previous == base.release_id and recorded_healthy(sandbox, previous)
    assert not lock_present(sandbox)
    # Uploads were staged privately: the SSH user's 0700 directory under app_root, none in /tmp.
    staging = read_host(sandbox, f"stat -c '%U %a' {APP_ROOT}/.staging; ls /tmp", "staging")
    assert staging.splitlines()[0] == "ubuntu 700", staging
    assert "pyinfra-" not in staging, staging


def test_sigterm_to_ai_deploy_no_gcp_stops_pyinfra_and_frees_the_host(
    sandbox: Sandbox, workdir: Path
) -> None:
    """Acceptance: SIGTERM to `ai-deploy deploy --no-gcp` during the health wait: exit 143, no
    pyinfra left running, the rollout's lock released, the next deploy from another hostname
    proceeds at once."""
    base = build_variant(workdir, "term-base")
    serve(sandbox, base)
    slow = build_variant(workdir, "term-slow", patch_main=slow_start(30))
    env = cli_env()
    proc = subprocess.Popen(
        [
            str(REPO / ".venv/bin/ai-deploy"),
            "deploy",
            "--no-gcp",
            "--host",
            sandbox.address,
            "--artifact",
            str(slow.path),
            "--data",
            "env_allow_empty=true",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any(GATE_STARTED in line for line in lines):
        assert proc.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    time.sleep(2)
    below = descendants(proc.pid)
    assert below, "pyinfra is not running below ai-deploy"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    took = time.monotonic() - sent
    reader.join(timeout=10)
    out = "".join(lines)
    print(out)
    assert code == 143, out
    assert took < 7.5, f"stopping took {took:.1f} s (a cancelled GitHub job allows 7.5 s)"
    left = [pid for pid in below if running(pid)]
    assert not left, f"still running after ai-deploy exited: {left}"
    # The rollout's holder drops the lock it took for the run (pyinfra ran under its token).
    assert "rollout stopped before its end" in out, out
    assert not lock_present(sandbox)

    # The next deploy, from a machine with another hostname, proceeds at once.
    cmd = " ".join(f"'{a}'" for a in deploy_command(sandbox.inventory, base.data))
    started = time.monotonic()
    nxt = subprocess.run(
        ["unshare", "-u", "sh", "-c", f"hostname other-runner && exec {cmd}"],
        cwd=REPO,
        env=dict(os.environ, NO_COLOR="1", TERM="dumb"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=600,
    )
    assert nxt.returncode == 0, nxt.stdout
    assert "is locked by" not in nxt.stdout
    assert time.monotonic() - started < 180
    assert serving_release(sandbox.address) == base.release_id
    assert recorded_healthy(sandbox, base.release_id)
