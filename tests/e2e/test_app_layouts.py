"""An app as `uv init --package` makes it (src/sentiment_svc/, its API importing a sibling
module), taken through what a new user does: `uv add fastapi uvicorn`, `uv lock`, `ai-deploy
init`, `ai-deploy artifact build`, `ai-deploy deploy --no-gcp --host`. It serves, `exec` imports
its package, and a second release with the same uv.lock runs on the same venv."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_deploy.artifact.build import release_id_from_artifact
from ai_deploy.host.uvbin import uv_binary
from ai_deploy.project import group_data_defaults
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import grand_total, health, run_cli, serving_release

pytestmark = pytest.mark.e2e

PKG = "sentiment_svc"
SCORING = (
    "def score(text: str) -> int:\n    return sum(w in ('good', 'great') for w in text.split())\n"
)
API = f"""from pathlib import Path

from fastapi import FastAPI

from {PKG}.scoring import score

RELEASE = Path(__file__).resolve().parents[2] / "REVISION"
app = FastAPI()


@app.get("/health")
def health() -> dict[str, object]:
    return {{"release": RELEASE.read_text().strip(), "score": score("a good day")}}
"""


@dataclass(frozen=True)
class App:
    path: Path
    env_file: Path
    init_said: str  # what `ai-deploy init` printed in it


def _uv(cwd: Path, *args: str) -> str:
    env = {**os.environ, "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never"}
    done = subprocess.run(
        [str(_local_uv()), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _local_uv() -> Path:
    return uv_binary(str(group_data_defaults()["uv_version"]), os.uname().machine)


def _cli(cwd: Path, *args: str) -> str:
    """`ai-deploy ARGS` run in CWD (its ai-deploy.toml applies), as a user runs it."""
    code, out = run_cli(Path(sys.executable).parent / "ai-deploy", cwd, *args)
    assert code == 0, out
    return out


def _lock_on_host(sandbox: Sandbox, app: Path) -> None:
    """`uv lock` in the sandbox host (the tests reach only loopback and the guests; the guests
    reach the package index), with this machine's pinned uv; the lock comes back."""
    work = "/tmp/lock-sentiment-svc"
    sandbox.ssh(f"rm -rf {work} && mkdir -p {work}")
    sandbox.put(_local_uv(), f"{work}/uv")
    sandbox.put(app / "pyproject.toml", f"{work}/pyproject.toml")
    sandbox.ssh(f"cd {work} && UV_PYTHON_DOWNLOADS=never ./uv lock --python python3", timeout=300)
    (app / "uv.lock").write_text(sandbox.ssh(f"cat {work}/uv.lock"))


def make_uv_init_app(sandbox: Sandbox, root: Path) -> Path:
    """ROOT/sentiment-svc as `uv init --package` makes it, its API importing a sibling module,
    fastapi and uvicorn added (locked on SANDBOX, which reaches the package index)."""
    path = root / "sentiment-svc"
    _uv(root, "init", "--no-config", "--package", "--vcs", "none", "--author-from", "none",
        "--python", "3.11", str(path))  # fmt: skip
    (path / "src" / PKG / "scoring.py").write_text(SCORING)
    (path / "src" / PKG / "api.py").write_text(API)
    _uv(path, "add", "--frozen", "fastapi", "uvicorn")
    _lock_on_host(sandbox, path)
    return path


@pytest.fixture(scope="module")
def app(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    root = tmp_path_factory.mktemp("layout")
    path = make_uv_init_app(sandbox, root)
    env_file = root / "app.env"
    env_file.write_text("GREETING=hello\n")
    yield App(path, env_file, _cli(path, "init"))


def _build(app: App, label: str) -> tuple[Path, str]:
    out = app.path.parent / f"dist-{label}"
    _cli(app.path, "artifact", "build", ".", "-o", str(out))
    (artifact,) = out.glob("*.tar.gz")
    return artifact, release_id_from_artifact(artifact)


def _deploy(app: App, sandbox: Sandbox, artifact: Path, *data: str, verbose: bool = False) -> str:
    return _cli(
        app.path, "deploy", *(["-v"] if verbose else []), "--no-gcp", "--host", sandbox.address,
        "--artifact", str(artifact),
        "--data", f"env_file={app.env_file}", *(x for d in data for x in ("--data", d)),
    )  # fmt: skip


def _app_root(sandbox: Sandbox) -> str:
    """The app's root on the host: init names the app after the project (sentiment-svc),
    where ai-deploy.toml reaches the deploy; ai-server otherwise."""
    (root,) = sandbox.sudo("ls -d /app/*/current").split()
    return root.removesuffix("/current")


def _venvs(sandbox: Sandbox, app_root: str) -> list[str]:
    return sandbox.sudo(f"ls -A {app_root}/venvs").split()


def test_a_uv_init_package_app_serves_execs_and_shares_its_venv(app: App, sandbox: Sandbox) -> None:
    assert f"the app: {PKG}.api:app (app_module)" in app.init_said
    assert f'app_module = "{PKG}.api:app"' in (app.path / "ai-deploy.toml").read_text()

    first, first_id = _build(app, "first")
    _deploy(app, sandbox, first)
    assert serving_release(sandbox.address) == first_id
    app_root = _app_root(sandbox)
    # The project is not installed in the venv: its package comes from the release's src/.
    code = f"import {PKG}.api as m; print(m.__file__); print(m.score('good great'))"
    out = _cli(app.path, "exec", "-i", str(sandbox.inventory), "--", "python", "-c", code)
    lines = [line.split(" | ", 1)[-1] for line in out.strip().splitlines()]
    assert lines[-2:] == [f"{app_root}/releases/{first_id}/src/{PKG}/api.py", "2"], out
    venvs = _venvs(sandbox, app_root)
    assert len([v for v in venvs if not v.startswith(".")]) == 1, venvs
    installed = sandbox.sudo(
        f"ls {app_root}/current/.venv/lib/python3*/site-packages | grep -ci sentiment || true"
    )
    assert installed.strip() == "0"  # nothing of the project itself in the shared venv

    # A second release, same uv.lock: a new release on the same venv, no new venv directory.
    (app.path / "src" / PKG / "scoring.py").write_text(SCORING.replace("'great'", "'fine'"))
    second, second_id = _build(app, "second")
    assert second_id != first_id
    _deploy(app, sandbox, second)
    assert serving_release(sandbox.address) == second_id
    assert _venvs(sandbox, app_root) == venvs
    links = sandbox.sudo(
        f"readlink {app_root}/releases/{first_id}/.venv {app_root}/releases/{second_id}/.venv"
    ).split()
    assert links[0] == links[1], links

    # The same artifact again: nothing changes, nothing restarts.
    (unit,) = sandbox.sudo(
        f"cd /etc/systemd/system && grep -l '^WorkingDirectory={app_root}/current$' *.service"
    ).split()
    pid = sandbox.sudo(f"systemctl show -p MainPID --value {unit}").strip()
    assert int(pid) > 0
    again = _deploy(app, sandbox, second, verbose=True)  # pyinfra's stream: its Grand total
    assert sandbox.sudo(f"systemctl show -p MainPID --value {unit}").strip() == pid, again
    totals = grand_total(again)
    assert (totals.success, totals.error) == (0, 0) and totals.no_change > 0, again
    assert _venvs(sandbox, app_root) == venvs


@pytest.mark.parametrize("strategy", ["bluegreen", "restart"])
def test_the_other_strategies_units_import_it_too(
    app: App, sandbox: Sandbox, strategy: str
) -> None:
    """/health calls the sibling module: a colour (blue/green) or the restart unit serving it
    imported the app's package from its release."""
    scoring = app.path / "src" / PKG / "scoring.py"
    scoring.write_text(f"{SCORING}# {strategy}\n")
    artifact, release_id = _build(app, strategy)
    _deploy(app, sandbox, artifact, f"deploy_strategy={strategy}")
    reply = health(sandbox.address)
    assert reply.status_code == 200 and reply.json() == {"release": release_id, "score": 1}
