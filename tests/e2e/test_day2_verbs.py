"""The day-2 verbs run as users run them (`python -m ai_deploy.cli VERB -i INVENTORY`) against
one sandbox host serving the example app: logs (and a followed log ended by Ctrl-C), releases,
audit, exec, a health-gated restart, and status for a healthy, a stopped and an unreachable
host, and into a pipe that closes early."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, require_root
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    assert_ok,
    cli,
    example_artifact,
    health,
    main_pid,
    revisions,
    run_deploy,
    serving_release,
)
from tests.e2e.deploykit import cli_ok as ok

pytestmark = pytest.mark.e2e
PYTHON = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def host() -> Iterator[Sandbox]:
    require_root()
    name = "dayverbs-" + hashlib.sha1(str(os.getpid()).encode()).hexdigest()[:8]
    started, inventory = hosts.up(count=1, name=name)
    try:
        yield Sandbox(started[0], inventory)
    finally:
        hosts.down([h.name for h in started])


@pytest.fixture(scope="module")
def release(host: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """The example app, deployed and healthy."""
    artifact = example_artifact(tmp_path_factory.mktemp("dayverbs"))
    assert_ok(run_deploy(host.inventory, artifact.data))
    assert serving_release(host.address) == artifact.release_id
    return artifact


def test_logs_prints_the_last_lines_one_prefix_per_host(host: Sandbox, release: Artifact) -> None:
    lines = ok(cli(host.inventory, "logs", "--lines", "5")).splitlines()
    assert 1 <= len(lines) <= 5, lines
    assert all(line.startswith(f"{host.name} | ") for line in lines), lines
    assert any("GET /health" in line for line in lines), lines  # the gate's own checks
    errors = ok(cli(host.inventory, "logs", "--error", "--grep", "startup complete"))
    assert errors.splitlines() == [f"{host.name} | INFO:     Application startup complete."]


def test_followed_log_shows_new_lines_and_ctrl_c_ends_quietly(
    host: Sandbox, release: Artifact
) -> None:
    follow = subprocess.Popen(
        [PYTHON, "-m", "ai_deploy.cli", "logs", "-i", str(host.inventory), "-f", "--lines", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(5)  # connected and following
        for _ in range(3):
            assert health(host.address).status_code == 200
        time.sleep(2)
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    seen = [line for line in out.splitlines() if "GET /health" in line]
    assert len(seen) >= 3 and all(line.startswith(f"{host.name} | ") for line in seen), out
    # Nothing is left following on the host.
    left = host.sudo("pgrep -fa '[t]ail -c' || true").strip()
    assert left == "", left


def test_releases_lists_the_release_with_who_when_and_size(
    host: Sandbox, release: Artifact
) -> None:
    text = ok(cli(host.inventory, "releases"))
    row = next(line for line in text.splitlines() if release.release_id in line)
    assert row.strip().startswith(f"current  {release.release_id}"), text
    assert "ago)" in row and "deploy ok by " in row and "KiB" in row, row
    [report] = json.loads(ok(cli(host.inventory, "releases", "--json")))
    assert report["host"] == host.name
    [kept] = report["releases"]
    assert kept["release"] == release.release_id
    assert (kept["current"], kept["healthy"], kept["action"], kept["outcome"]) == (
        True,
        True,
        "deploy",
        "ok",
    )
    assert kept["size_bytes"] > 0 and kept["who"]


def test_audit_lists_revisions_newest_first_naming_the_host(
    host: Sandbox, release: Artifact
) -> None:
    lines = ok(cli(host.inventory, "audit")).splitlines()
    assert lines and host.name in lines[0] and release.release_id in lines[0], lines
    assert len(lines) == len(revisions(host))


def test_exec_runs_in_the_release_as_the_service_user(host: Sandbox, release: Artifact) -> None:
    ok(cli(host.inventory, "exec", "--", "python", "-c", "import fastapi"))
    script = 'id -un; pwd; echo "$VIRTUAL_ENV"; command -v python; echo "$MODEL_LOAD_SECONDS"'
    out = ok(cli(host.inventory, "exec", "--", "sh", "-c", script)).splitlines()
    where = f"/app/ai-server/releases/{release.release_id}"
    assert out[:4] == ["ai-server", where, f"{where}/.venv", f"{where}/.venv/bin/python"], out
    assert out[4] != "", "the .env was not loaded"  # the example's .env sets it
    failed = cli(host.inventory, "exec", "--", "sh", "-c", "echo oops >&2; exit 3")
    assert failed.returncode == 3 and "oops" in failed.stderr


def test_restart_goes_through_the_health_gate(host: Sandbox, release: Artifact) -> None:
    before = main_pid(host)
    out = ok(cli(host.inventory, "restart"))
    assert f"{host.name} | release {release.release_id} restarted and healthy" in out, out
    after = main_pid(host)
    assert after not in ("0", before)
    assert health(host.address).json()["pid"] == int(after)
    assert revisions(host)[-1].split()[1:4] == ["restart", release.release_id, "ok"]


def test_status_json_and_text_of_a_healthy_host(host: Sandbox, release: Artifact) -> None:
    [report] = json.loads(ok(cli(host.inventory, "status", "--json")))
    assert (report["host"], report["healthy"], report["current"]) == (
        host.name,
        True,
        release.release_id,
    )
    assert report["service"]["active"] == "active"
    assert report["health"]["code"] == 200
    assert abs(report["health"]["loaded_at"] - time.time()) < 3600
    text = ok(cli(host.inventory, "status"))
    assert text.startswith(f"{host.name} ({host.address}): healthy"), text
    assert "  loaded:    " in text and "ago)" in text


def test_status_into_a_pipe_that_closes_early(host: Sandbox, release: Artifact) -> None:
    command = f"{PYTHON} -m ai_deploy.cli status -i {shlex.quote(str(host.inventory))} | head -1"
    done = subprocess.run(
        ["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0
    assert done.stdout.splitlines() == [f"{host.name} ({host.address}): healthy"]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_status_of_a_stopped_service_fails_and_still_shows_the_host(
    host: Sandbox, release: Artifact
) -> None:
    host.sudo("systemctl stop ai-server.socket ai-server.service")
    try:
        done = cli(host.inventory, "status")
        assert done.returncode == 1, done.stdout
        assert done.stdout.startswith(f"{host.name} ({host.address}): NOT HEALTHY"), done.stdout
        assert "inactive" in done.stdout
    finally:
        ok(cli(host.inventory, "restart"))
    ok(cli(host.inventory, "status"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_shows_every_host_when_one_is_unreachable(
    host: Sandbox, release: Artifact, tmp_path: Path
) -> None:
    text = host.inventory.read_text()
    gone = (
        f"    ('dayverbs-gone', {{'ssh_hostname': '127.0.0.1', 'ssh_port': {_closed_port()}, "
        f"'ssh_user': 'ubuntu', 'ssh_known_hosts_file': "
        f"{str(host.inventory.parent / 'known_hosts')!r}}}),\n]\n"
    )
    inventory = tmp_path / "sandbox.py"  # same file name: same group (sandbox) as the host's
    inventory.write_text(text.replace("\n]\n", f"\n{gone}"))
    done = cli(inventory, "status")
    assert done.returncode == 1, done.stdout
    assert f"{host.name} ({host.address}): healthy" in done.stdout
    assert "dayverbs-gone (127.0.0.1): UNREACHABLE" in done.stdout
    as_json = cli(inventory, "status", "--json")
    assert as_json.returncode == 1
    reports = {r["host"]: r for r in json.loads(as_json.stdout)}
    assert reports[host.name]["healthy"] is True
    assert reports["dayverbs-gone"]["reachable"] is False
    assert "unreachable" in reports["dayverbs-gone"]["error"]


# What a host writes (an app's log line, a revisions.log entry, a command's output) that would act
# on the operator's terminal: OSC 52 (writes the clipboard), erase line + carriage return (hides
# what came before), a right-to-left override (shows text reversed).
HOSTILE = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2K\rall fine\u202eevil"
TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_host_text_reaches_the_terminal_inert(host: Sandbox, release: Artifact) -> None:
    log = shlex.quote("/var/log/ai-server/ai-server.log")  # app_log_dir/app_name.log
    journal = shlex.quote(f"{APP_ROOT}/revisions.log")
    who = "mallory\x1b]52;c;cm0gLXJmIH4=\x07"  # releases shows who put a release in service
    entry = f"2026-12-07T10:00:00Z deploy {release.release_id} ok by={who} reason={HOSTILE}"
    host.sudo(f"cp -p {log} {log}.keep && cp -p {journal} {journal}.keep")
    try:
        host.sudo(f"printf '%s\\n' {shlex.quote(HOSTILE)} >> {log}")
        host.sudo(f"printf '%s\\n' {shlex.quote(entry)} >> {journal}")
        shown = {
            "logs": cli(host.inventory, "logs", "--lines", "3").stdout,
            "audit": cli(host.inventory, "audit").stdout,
            "releases": cli(host.inventory, "releases").stdout,
            "status": cli(host.inventory, "status").stdout,
            "exec": cli(host.inventory, "exec", "--", "printf", "%s\\n", HOSTILE).stdout,
        }
    finally:
        host.sudo(f"mv {log}.keep {log} && mv {journal}.keep {journal}")
    for verb, out in shown.items():
        assert TERMINAL_CONTROLS.search(out) is None, (verb, out)
    for verb, out in shown.items():  # shown, as escapes
        assert "\\x1b]52;c;cm0gLXJmIH4=\\x07" in out, (verb, out)
    for verb in ("logs", "audit", "status", "exec"):
        assert "\\x1b[2K" in shown[verb] and "all fine\\u202eevil" in shown[verb], verb
