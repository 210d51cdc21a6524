"""One settings file for every command and target: an app named `sentiment` (the example app
renamed) keeps its settings in its own ai-deploy.toml (app_name, app_port, a relative env_file,
and a production environment with hosts, ssh_user and a relative ssh_key) and is deployed from
its own directory with no SSH variables at all: with `-i` a hand-written inventory that names
only the host, and with `-e production` (the environment's hosts). Everything on the host is
named after the app; nothing named ai-server is created."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from ai_deploy.artifact.build import build_artifact, release_id_from_artifact
from ai_deploy.sandbox.paths import ssh_key_path
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import REPO, copy_example, grand_total, read_host, run_cli

pytestmark = pytest.mark.e2e
AI_DEPLOY = str(REPO / ".venv" / "bin" / "ai-deploy")
APP = "sentiment"
PORT = 8100


def _toml(address: str) -> str:
    return f"""\
app_name = "{APP}"
app_port = {PORT}
env_file = ".env"

[environments.production]
hosts = ["{address}"]
ssh_user = "ubuntu"
ssh_key = "keys/deploy_key"
"""


@pytest.fixture(scope="module")
def app(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's directory: its code (the example app, its project renamed), ai-deploy.toml,
    .env, the key, and a hand-written inventory naming only the host."""
    root = tmp_path_factory.mktemp("app")
    src = copy_example(root / APP)
    for name in ("pyproject.toml", "uv.lock"):  # the root project's name, nothing else
        path = src / name
        path.write_text(path.read_text().replace('name = "ai-server"', f'name = "{APP}"'))
    (src / "ai-deploy.toml").write_text(_toml(sandbox.address))
    (src / ".env").write_text("MODEL_LOAD_SECONDS=1\nSENTIMENT_MARK=from-relative-env\n")
    (src / "keys").mkdir()
    shutil.copy(ssh_key_path(), src / "keys" / "deploy_key")
    (src / "keys" / "deploy_key").chmod(0o600)
    (src / "inventory.py").write_text(f'hosts = ["{sandbox.address}"]\n')
    return src


def _ai_deploy(app: Path, *args: str) -> tuple[int, str]:
    """`ai-deploy ARGS` from the app's directory, with no SSH (or GCP, or CI) variables."""
    config = str(app.parent / "config")  # ai-deploy's known_hosts goes under here
    return run_cli(Path(AI_DEPLOY), app, *args, ssh=False, XDG_CONFIG_HOME=config)


def _health(sandbox: Sandbox) -> str:
    reply = requests.get(f"http://{sandbox.address}:{PORT}/health", timeout=5)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["release"])


def _main_pid(sandbox: Sandbox) -> str:
    return read_host(sandbox, f"systemctl show -p MainPID --value {APP}", "MainPID").strip()


def test_deploy_with_a_hand_written_inventory_uses_the_apps_settings(
    sandbox: Sandbox, app: Path
) -> None:
    artifact = build_artifact(app, app.parent / "dist")
    assert artifact.name.startswith(f"{APP}-")
    release = release_id_from_artifact(artifact)

    code, out = _ai_deploy(app, "deploy", "--no-gcp", "-i", "inventory.py", "--artifact",
                           str(artifact))  # fmt: skip
    assert code == 0, out
    assert _health(sandbox) == release
    known_hosts = app.parent / "config" / "ai-deploy" / "known_hosts"
    assert str(known_hosts) in out and sandbox.address in known_hosts.read_text()

    listing = read_host(
        sandbox,
        f"readlink /app/{APP}/current\n"
        f"systemctl is-active {APP}.service {APP}.socket\n"
        f"stat -c '%U %G %a' /app/{APP}/.env\n"
        f"cat /app/{APP}/.env\n"
        f"ls /var/log/{APP}\n"
        f"id -un {APP}; id -un {APP}-build\n"
        f"ls -A /app/{APP} | grep -v '^[.]'\n",
        "the app's state",
    ).split()
    assert listing[:5] == [f"releases/{release}", "active", "active", APP, APP]
    assert "SENTIMENT_MARK=from-relative-env" in listing
    assert {f"{APP}.log", f"{APP}-error.log", APP, f"{APP}-build"} <= set(listing)
    # No data directory it never asked for.
    assert listing[-7:] == [
        "cache", "current", "healthy", "last-start.json", "releases", "revisions.log", "venvs"
    ]  # fmt: skip

    leftovers = read_host(
        sandbox,
        "ls -d /app/* /var/log/* /etc/systemd/system/* /etc/logrotate.d/* /etc/nginx/* "
        "2>/dev/null | grep ai-server || true\n"
        "getent passwd ai-server ai-deploy-build ai-server-build || true\n",
        "anything named after the default app",
    )
    assert leftovers.strip() == ""


def test_status_with_the_inventory_checks_the_apps_unit(sandbox: Sandbox, app: Path) -> None:
    code, out = _ai_deploy(app, "status", "-i", "inventory.py")
    assert code == 0, out
    assert f"{APP}.service active/running" in out
    assert "ai-server" not in out


def test_deploy_to_the_environments_hosts_works_the_same(sandbox: Sandbox, app: Path) -> None:
    """`-e production`: the environment's hosts and SSH settings, and an env_file given on the
    command line relative to the working directory (the same content: nothing to change); the
    release already serves, so nothing is restarted."""
    artifact = next((app.parent / "dist").glob(f"{APP}-*.tar.gz"))
    (app / "same.env").write_text((app / ".env").read_text())
    before = _main_pid(sandbox)
    code, out = _ai_deploy(app, "deploy", "--no-gcp", "-e", "production", "--artifact",
                           str(artifact), "--data", "env_file=same.env")  # fmt: skip
    assert code == 0, out
    assert _health(sandbox) == release_id_from_artifact(artifact)
    assert _main_pid(sandbox) == before


def test_ai_deploy_pyinfra_with_the_inventory_changes_nothing_the_second_time(
    sandbox: Sandbox, app: Path
) -> None:
    """`ai-deploy pyinfra -i INV`: pyinfra's own run, reaching the host with the environment's
    ssh_user and ssh_key; the same release again reports no change and restarts nothing."""
    artifact = next((app.parent / "dist").glob(f"{APP}-*.tar.gz"))
    before = _main_pid(sandbox)
    relative = Path("..") / artifact.relative_to(app.parent)  # from the working directory
    code, out = _ai_deploy(app, "pyinfra", "-i", "inventory.py", "--", "-y", "--data",
                           f"artifact={relative}")  # fmt: skip
    assert code == 0, out
    assert grand_total(out).success == 0, out
    assert _main_pid(sandbox) == before
