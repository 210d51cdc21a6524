"""Every app layout uv makes (made here by the real `uv init`, offline): init finds the app
module, the artifact build and check accept it, and the module imports as the host imports it
(Python run in the extracted release with the unit's and exec's PYTHONPATH, the shared venv
played by a directory holding a stub `fastapi`). Where the check looks and where Python finds
the module are compared on trees built to make them disagree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import jinja2
import pytest

from ai_deploy.appinit.detect import find_app_module
from ai_deploy.artifact.build import ArtifactError, build_artifact
from ai_deploy.artifact.check import check_artifact
from ai_deploy.artifact.importpath import (
    entry_file,
    exec_pythonpath,
    on_disk,
    service_pythonpath,
)
from tests.unit.test_templates import TEMPLATES, VALUES

pytestmark = pytest.mark.unit

PKG = "sentiment_svc"
# uv init's layouts: --no-package is the flat main.py; every --package backend makes src/<pkg>.
LAYOUTS = {
    "flat": ["--no-package"],
    "package": ["--package"],
    **{b: ["--package", "--build-backend", b] for b in ("hatch", "uv", "setuptools", "flit")},
    **{b: ["--package", "--build-backend", b] for b in ("pdm", "poetry")},
}
API = "from fastapi import FastAPI\n\nfrom {sibling} import score\n\napp = FastAPI()\n"


def uv_init(where: Path, args: list[str]) -> Path:
    """`uv init` of a project named sentiment-svc in WHERE, offline and without user config."""
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH"
    env = {**os.environ, "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never"}
    cmd = [uv, "init", "--no-config", "--vcs", "none", "--no-workspace", "--author-from", "none"]
    subprocess.run(
        [*cmd, *args, "--name", "sentiment-svc", str(where)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    return where


def add_app(app: Path) -> str:
    """The FastAPI app with a sibling module it imports, where the layout keeps code; returns
    the module the app is in."""
    (app / "uv.lock").write_text("version = 1\n")  # the build reads none of it
    package = app / "src" / PKG
    if package.is_dir():
        (package / "scoring.py").write_text("def score(text):\n    return len(text)\n")
        (package / "api.py").write_text(API.format(sibling=f"{PKG}.scoring"))
        return f"{PKG}.api"
    (app / "scoring.py").write_text("def score(text):\n    return len(text)\n")
    (app / "main.py").write_text(API.format(sibling="scoring"))
    return "main"


@pytest.fixture(scope="module")
def venv_stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the shared venv gives the app here: a `fastapi` with a FastAPI class."""
    site = tmp_path_factory.mktemp("site")
    (site / "fastapi.py").write_text("class FastAPI:\n    pass\n")
    return site


def imported_from(module: str, cwd: Path, pythonpath: str) -> str | None:
    """The file Python imports MODULE from, run in CWD with PYTHONPATH; None if it fails."""
    code = f"import importlib; print(importlib.import_module({module!r}).__file__)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def extract(artifact: Path, where: Path) -> Path:
    with tarfile.open(artifact) as tar:
        tar.extractall(where, filter="data")
    return where


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_uv_layout_is_found_built_checked_and_imports_as_on_the_host(
    layout: str, tmp_path: Path, venv_stub: Path
) -> None:
    app = uv_init(tmp_path / "sentiment-svc", LAYOUTS[layout])
    module = add_app(app)
    found = find_app_module(app)
    assert found == f"{module}:app"  # never src.<pkg>.api: that is not how siblings import it

    artifact = build_artifact(app, tmp_path / "dist", app_module=found)
    checked = check_artifact(artifact, found)
    assert checked.members > 0
    release = extract(artifact, tmp_path / "releases" / "r1")
    entry = entry_file(found, on_disk(release))
    assert entry == ("main.py" if layout == "flat" else f"src/{PKG}/api.py")

    # The service: uvicorn runs in the release with the unit's relative PYTHONPATH.
    unit_path = f"{service_pythonpath()}:{venv_stub}"
    assert imported_from(module, release, unit_path) == str(release / entry)
    # exec: the same import from anywhere, with the release's absolute path.
    exec_path = f"{exec_pythonpath(str(release))}:{venv_stub}"
    assert imported_from(module, Path("/"), exec_path) == str(release / entry)
    # Without the import path the src/ layout's own package is not importable at all
    # (the shared venv does not install the project): the PYTHONPATH is what makes it work.
    if layout != "flat":
        assert imported_from(module, release, str(venv_stub)) is None


# Trees where a naive "is the file there" check and Python's import disagree.
IN_SRC = {f"src/{PKG}/__init__.py": "", f"src/{PKG}/api.py": "app = 1\n"}
TRICKY = {
    # A regular package at the root hides src/'s: sentiment_svc.api does not import.
    "root-package-shadows-src": ({f"{PKG}/__init__.py": "", **IN_SRC}, None),
    # A root directory without __init__.py is only a namespace portion: src/'s package wins.
    "root-namespace-dir-yields-to-src": ({f"{PKG}/notes.py": "", **IN_SRC}, f"src/{PKG}/api.py"),
    # A module of that name at the root: it has no submodules.
    "root-module-has-no-submodule": ({f"{PKG}.py": "", **IN_SRC}, None),
    # Both have it: the root's comes first, as uvicorn imports from its working directory.
    "root-before-src": (
        {f"{PKG}/__init__.py": "", f"{PKG}/api.py": "app = 1\n", f"src/{PKG}/api.py": ""},
        f"{PKG}/api.py",
    ),
    # A package's __init__ before a module of the same name in the same directory.
    "package-before-module": (
        {f"src/{PKG}/__init__.py": "", f"src/{PKG}/api/__init__.py": "", f"src/{PKG}/api.py": ""},
        f"src/{PKG}/api/__init__.py",
    ),
    # Namespace packages all the way down, in src/.
    "namespace-in-src": ({f"src/{PKG}/api.py": "app = 1\n"}, f"src/{PKG}/api.py"),
}


@pytest.mark.parametrize("case", sorted(TRICKY))
def test_the_check_looks_where_python_imports_from(case: str, tmp_path: Path) -> None:
    files, expected = TRICKY[case]
    release = tmp_path / "release"
    for name, text in {"pyproject.toml": "", "uv.lock": "version = 1\n", **files}.items():
        (release / name).parent.mkdir(parents=True, exist_ok=True)
        (release / name).write_text(text)
    module = f"{PKG}.api"
    real = imported_from(module, release, service_pythonpath())
    assert real == (str(release / expected) if expected else None)  # the premise holds
    assert entry_file(f"{module}:app", on_disk(release)) == expected
    app_module = f"{module}:app"
    if expected is None:
        with pytest.raises(ArtifactError, match=r"no sentiment_svc/api\.py or src/"):
            build_artifact(release, tmp_path / "dist", app_module=app_module)
    else:
        artifact = build_artifact(release, tmp_path / "dist", app_module=app_module)
        check_artifact(artifact, app_module)


def test_a_linked_entry_module_in_src_is_refused(tmp_path: Path) -> None:
    app = uv_init(tmp_path / "sentiment-svc", LAYOUTS["package"])
    module = add_app(app)
    api = app / "src" / PKG / "api.py"
    api.rename(api.with_name("real_api.py"))
    api.symlink_to("real_api.py")
    with pytest.raises(ArtifactError, match=r"src/sentiment_svc/api\.py is a symbolic link"):
        build_artifact(app, tmp_path / "dist", app_module=f"{module}:app")


def _environment(unit: str) -> dict[str, str]:
    """The unit's Environment= assignments."""
    found: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            name, value = line.removeprefix("Environment=").split("=", 1)
            found[name] = value
    return found


@pytest.mark.parametrize(
    "template,extra",
    [
        ("ai-server.service.j2", {"socket": False}),
        ("ai-server.service.j2", {"socket": True}),
        ("ai-server@.service.j2", {}),
    ],
    ids=["restart", "socket", "colour"],
)
def test_every_unit_imports_the_apps_own_package_from_its_release(
    template: str, extra: dict[str, object], tmp_path: Path, venv_stub: Path
) -> None:
    values = {**VALUES, "python_path": service_pythonpath(), **extra}
    text = jinja2.Template((TEMPLATES / template).read_text()).render(**values)
    env = _environment(text)
    assert env["PYTHONPATH"] == "src"  # relative: resolved in the release the unit started in
    app = uv_init(tmp_path / "sentiment-svc", LAYOUTS["package"])
    module = add_app(app)
    artifact = build_artifact(app, tmp_path / "dist", app_module=f"{module}:app")
    release = extract(artifact, tmp_path / "releases" / "r1")
    (tmp_path / "current").symlink_to(release)  # WorkingDirectory= goes through the link
    found = imported_from(module, tmp_path / "current", f"{env['PYTHONPATH']}:{venv_stub}")
    assert found == str(release / "src" / PKG / "api.py")


@pytest.mark.parametrize("root_main", [False, True], ids=["src-only", "root-main-too"])
def test_init_names_the_module_that_imports_the_file_it_found(
    root_main: bool, tmp_path: Path, venv_stub: Path
) -> None:
    """src/main.py holds the app: `main` is the name, unless a main.py at the root (uv init's
    hello script) would be imported by that name instead; then `src.main`."""
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "src" / "main.py").write_text("from fastapi import FastAPI\n\napp = FastAPI()\n")
    if root_main:
        (app / "main.py").write_text("def main():\n    print('hello')\n")
    found = find_app_module(app)
    assert found == ("src.main:app" if root_main else "main:app")
    assert entry_file(found, on_disk(app)) == "src/main.py"
    module = found.split(":")[0]
    assert imported_from(module, app, f"{service_pythonpath()}:{venv_stub}") == str(
        app / "src" / "main.py"
    )


def test_artifact_build_with_no_arguments_packs_the_working_directory_into_its_dist(
    tmp_path: Path,
) -> None:
    """`ai-deploy artifact build` in a `uv init --package` app: DIR is `.`, OUTDIR `./dist`,
    and a second build packs the same members (dist/ itself is never packed)."""
    app = uv_init(tmp_path / "svc", ["--package"])
    module = add_app(app)
    (app / "ai-deploy.toml").write_text(f'app_module = "{module}:app"\n')
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH"
    (app / "uv.lock").unlink()  # add_app's stub: a real lock for the build's check
    env = {**os.environ, "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([uv, "lock", "--no-config"], cwd=app, check=True, capture_output=True,
                   env=env, timeout=120)  # fmt: skip
    ids = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "ai_deploy.cli", "artifact", "build"],
            cwd=app,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        ids.append(sorted(p.name for p in (app / "dist").glob("*.tar.gz")))
    assert len(ids[0]) == 1 and ids[0][0].startswith("sentiment-svc-") and ids[1] == ids[0]
