"""A new user's first deploy, as they would do it: the tool installed from a wheel
(`uv tool install`), an app made by `uv init --package` with its own name (its API in
src/sentiment_svc/ importing a sibling module, fastapi and uvicorn added), `ai-deploy init`,
then only edits to the ai-deploy.toml it wrote (app_name, app_port, a relative env_file, an
environment with hosts, ssh_user and an ssh_key relative to the toml) and no SSH variables at
all. `deploy -e lab` serves; the service and `exec` import the app's package; the host uses
/app/sentiment, sentiment.service and /var/log/sentiment and nothing named ai-server; `status
-i INVENTORY` from the app's directory checks sentiment.service."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ai_deploy.artifact.build import release_id_from_artifact
from ai_deploy.sandbox.paths import ssh_key_path
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import run_cli
from tests.e2e.test_app_layouts import PKG, make_uv_init_app
from tests.e2e.test_installed_tool import installed  # noqa: F401  (the wheel-installed tool)

pytestmark = pytest.mark.e2e

APP_NAME, PORT = "sentiment", 8300


def _run(tool: Path, cwd: Path, *args: str) -> tuple[int, str]:
    """ARGS as the user runs them: no SSH, settings, GCP or CI variables from the outside."""
    return run_cli(tool, cwd, *args, ssh=False)


def _edit_settings(path: Path, address: str) -> None:
    """What the user changes in the ai-deploy.toml init wrote: the app's name and port, a
    relative env_file, and an environment of their own with its host and SSH access."""
    mine = {"app_name": f'"{APP_NAME}"', "app_port": str(PORT), "env_file": '".env"'}
    kept = [
        line for line in path.read_text().splitlines() if line.split("=")[0].strip() not in mine
    ]
    top = [f"{k} = {v}" for k, v in mine.items()]
    lab = [
        "",
        "[environments.lab]",
        f'hosts = ["{address}"]',
        'ssh_user = "ubuntu"',
        'ssh_key = "keys/lab_ed25519"',
    ]
    path.write_text("\n".join([*top, *kept, *lab]) + "\n")


@pytest.fixture(scope="module")
def app(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = make_uv_init_app(sandbox, tmp_path_factory.mktemp("new-user"))
    (path / ".env").write_text("GREETING=hello\n")
    keys = path / "keys"
    keys.mkdir()
    shutil.copy(ssh_key_path(), keys / "lab_ed25519")
    (keys / "lab_ed25519").chmod(0o600)
    yield path


def test_a_new_users_app_deploys_from_one_settings_file(
    installed: Path,  # noqa: F811
    app: Path,
    sandbox: Sandbox,
) -> None:
    code, out = _run(installed, app, "init", "--project", "my-proj-1", "--zone",
                     "asia-northeast3-a", "--instance", "gpu-vm-1")  # fmt: skip
    assert code == 0, out
    assert f"{PKG}.api:app" in out
    _edit_settings(app / "ai-deploy.toml", sandbox.address)
    code, out = _run(installed, app, "config", "-e", "lab")
    assert code == 0, out

    code, out = _run(installed, app, "artifact", "build", ".", "-o", "dist")
    assert code == 0, out
    (artifact,) = (app / "dist").glob("*.tar.gz")
    assert "ai-server" not in artifact.name, artifact.name
    release = release_id_from_artifact(artifact)

    code, out = _run(installed, app, "deploy", "-e", "lab", "--no-gcp", "--artifact",
                     str(artifact.relative_to(app)), "--health-interval", "1")  # fmt: skip
    assert code == 0, out
    reply = requests.get(f"http://{sandbox.address}:{PORT}/health", timeout=5)
    assert reply.status_code == 200 and reply.json() == {"release": release, "score": 1}

    # exec imports the app's own package, with the service's .env.
    code, out = _run(installed, app, "exec", "-e", "lab", "--", "python", "-c",
                     f"import os, {PKG}.scoring as s; print(s.score('good great'), "
                     "os.environ['GREETING'])")  # fmt: skip
    assert code == 0, out
    assert out.strip().splitlines()[-1].endswith("2 hello"), out

    # Everything on the host goes by the app's name; nothing is called ai-server.
    listing = sandbox.sudo(
        f"systemctl is-active {APP_NAME}.service; ls -d /app/{APP_NAME}/current "
        f"/var/log/{APP_NAME}/{APP_NAME}.log; id -un {APP_NAME}; stat -c '%U %a' "
        f"/app/{APP_NAME}/.env"
    )
    assert listing.split() == [
        "active", f"/app/{APP_NAME}/current", f"/var/log/{APP_NAME}/{APP_NAME}.log", APP_NAME,
        APP_NAME, "600",
    ], listing  # fmt: skip
    made = sandbox.sudo(
        "ls -d /app/* /var/log/* /etc/systemd/system/* /etc/logrotate.d/* 2>/dev/null; "
        "getent passwd | cut -d: -f1; getent group | cut -d: -f1"
    )
    assert "ai-server" not in made and "dojangkok" not in made, made

    # status with a hand-written inventory, run from the app's directory, checks its unit.
    (app / "lab_hosts.py").write_text(
        f'lab = [("{sandbox.address}", {{"ssh_user": "ubuntu", '
        f'"ssh_key": "{app / "keys" / "lab_ed25519"}"}})]\n'
    )
    code, out = _run(installed, app, "status", "-i", "lab_hosts.py")
    assert code == 0, out
    assert f"{APP_NAME}.service" in out and release in out, out
    assert "ai-server" not in out, out
