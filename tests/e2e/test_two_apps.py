"""Two apps on one VM: `alpha` (port 8000) and `beta` (port 8100), each from its own directory
with its own ai-deploy.toml (app_name, app_port, a relative env_file) and the same inventory.
Each lives under its own names (/app/<name>, <name>.service, /var/log/<name>), nothing named
ai-server is made, and each one's deploy, lock, status and rollback touch only its own."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import REPO, Artifact, build_variant, cli_env, read_host, run_cli

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"
PORTS = {"alpha": 8000, "beta": 8100}


def _slow_start(text: str) -> str:
    """A release that takes a while to start: its deploy holds alpha's lock meanwhile."""
    return text.replace("from fastapi import FastAPI\n", "from fastapi import FastAPI\n\n"
                        "import time as _t\n_t.sleep(25)\n", 1)  # fmt: skip


@dataclass
class Apps:
    dirs: dict[str, Path]
    builds: dict[str, Artifact]


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    work = tmp_path_factory.mktemp("two-apps")
    dirs: dict[str, Path] = {}
    for name, port in PORTS.items():
        d = work / name
        d.mkdir()
        (d / "ai-deploy.toml").write_text(
            f'app_name = "{name}"\napp_port = {port}\nenv_file = "app.env"\n'
        )
        (d / "app.env").write_text(f"MODEL_LOAD_SECONDS=1\nAPP_LABEL={name}\n")
        dirs[name] = d
    builds = {
        "alpha-1": build_variant(work, "alpha-1"),
        "alpha-2": build_variant(work, "alpha-2"),
        "alpha-slow": build_variant(work, "alpha-slow", patch_main=_slow_start),
        "beta-1": build_variant(work, "beta-1"),
        "beta-2": build_variant(work, "beta-2"),
    }
    yield Apps(dirs, builds)


def _cmd(sandbox: Sandbox, *args: str) -> list[str]:
    return [str(AI_DEPLOY), *args, "-i", str(sandbox.inventory)]


def _run(apps: Apps, app: str, sandbox: Sandbox, *args: str) -> tuple[int, str]:
    """ARGS run in APP's directory: its ai-deploy.toml applies; no SSH variables."""
    return run_cli(AI_DEPLOY, apps.dirs[app], *args, "-i", str(sandbox.inventory), ssh=False)


def _deploy_args(apps: Apps, build: str) -> tuple[str, ...]:
    return (
        "deploy", "--no-gcp", "--artifact", str(apps.builds[build].path),
        "--health-interval", "1", "--health-attempts", "60",
    )  # fmt: skip


def _serving(sandbox: Sandbox, app: str) -> str:
    reply = requests.get(f"http://{sandbox.address}:{PORTS[app]}/health", timeout=5)
    assert reply.status_code == 200, (app, reply.status_code, reply.text)
    return str(reply.json()["release"])


def _state(sandbox: Sandbox, app: str) -> str:
    root = f"/app/{app}"
    return read_host(
        sandbox,
        f"ls -1 {root}/releases; readlink {root}/current {root}/previous || true\n"
        f"if [ -e {root}/.deploy.lock ]; then echo LOCKED; fi\n"
        f"cat {root}/revisions.log\n"
        f"systemctl show -p MainPID --value {app}.service",
        f"{app}'s state",
    )


def test_1_both_apps_serve_under_their_own_names(apps: Apps, sandbox: Sandbox) -> None:
    for app in PORTS:
        code, out = _run(apps, app, sandbox, *_deploy_args(apps, f"{app}-1"))
        assert code == 0, out
    for app in PORTS:
        assert _serving(sandbox, app) == apps.builds[f"{app}-1"].release_id
        listing = read_host(
            sandbox,
            f"stat -c '%U %a' /app/{app}/.env; systemctl is-active {app}.service; "
            f"ls /var/log/{app}; id -un {app}",
            f"{app}'s names",
        )
        assert f"{app} 600" in listing and "active" in listing, listing
        assert f"{app}.log" in listing, listing
    made = read_host(
        sandbox,
        "ls -d /app/* /var/log/* /etc/systemd/system/*.service /etc/systemd/system/*.socket "
        "/etc/nginx /etc/logrotate.d/* 2>/dev/null || true; getent passwd | cut -d: -f1",
        "what the deploys made",
    )
    assert "ai-server" not in made, made
    assert "dojangkok" not in made and "chroma_db" not in made, made


def test_2_a_deploy_of_one_leaves_the_other_alone(apps: Apps, sandbox: Sandbox) -> None:
    beta_before = _state(sandbox, "beta")
    code, out = _run(apps, "alpha", sandbox, *_deploy_args(apps, "alpha-2"))
    assert code == 0, out
    assert _serving(sandbox, "alpha") == apps.builds["alpha-2"].release_id
    assert _state(sandbox, "beta") == beta_before


def test_3_locks_are_per_app(apps: Apps, sandbox: Sandbox) -> None:
    slow = subprocess.Popen(
        _cmd(sandbox, *_deploy_args(apps, "alpha-slow")),
        cwd=apps.dirs["alpha"],
        env=cli_env(ssh=False),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while "LOCKED" not in _state(sandbox, "alpha"):
            assert slow.poll() is None, slow.stdout.read() if slow.stdout else ""
            assert time.monotonic() < deadline, "alpha's deploy never took its lock"
            time.sleep(1)
        code, out = _run(apps, "beta", sandbox, "lock", "status")
        assert code == 0 and "free" in out and "held" not in out, out
        code, out = _run(apps, "alpha", sandbox, "lock", "status")
        assert "held" in out, out
        # beta deploys while alpha's lock is held.
        code, out = _run(apps, "beta", sandbox, *_deploy_args(apps, "beta-2"))
        assert code == 0, out
        assert _serving(sandbox, "beta") == apps.builds["beta-2"].release_id
    finally:
        out = slow.communicate(timeout=900)[0]
    assert slow.returncode == 0, out
    assert _serving(sandbox, "alpha") == apps.builds["alpha-slow"].release_id


def test_4_status_and_rollback_touch_only_their_own(apps: Apps, sandbox: Sandbox) -> None:
    code, out = _run(apps, "beta", sandbox, "status")
    assert code == 0, out
    assert apps.builds["beta-2"].release_id in out and "beta.service" in out, out
    assert apps.builds["alpha-slow"].release_id not in out and "alpha" not in out, out

    beta_before = _state(sandbox, "beta")
    code, out = _run(apps, "alpha", sandbox, "rollback")
    assert code == 0, out
    assert _serving(sandbox, "alpha") == apps.builds["alpha-2"].release_id
    assert _state(sandbox, "beta") == beta_before
    assert _serving(sandbox, "beta") == apps.builds["beta-2"].release_id
