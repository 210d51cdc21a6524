"""The artifact of a git work tree is what git sees, and a stale uv.lock is refused.

Real git repositories and the real uv run here, no mocks: git with its system and global
configuration shut out, uv offline with an empty cache (a lock that matches its
pyproject.toml is settled from the two files alone; a stale one is refused either way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ai_deploy.artifact.build import ArtifactError, build_artifact
from ai_deploy.artifact.lockcheck import NO_LOCK_CHECK_ENV, find_uv

pytestmark = pytest.mark.unit

EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "ai-server"
AI_DEPLOY = Path(sys.executable).with_name("ai-deploy")
GIT_IDENTITY = ("-c", "user.name=Artifact Test", "-c", "user.email=artifact@example.invalid")


@pytest.fixture(autouse=True)
def quiet_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git without the machine's configuration (a global excludesFile would change what is
    ignored); uv offline with an empty cache, so no test depends on an index."""
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", NO_LOCK_CHECK_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, check=True, capture_output=True)


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE_APP, dest, ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    return dest


def member_names(artifact: Path) -> set[str]:
    with tarfile.open(artifact, "r:gz") as tar:
        return set(tar.getnames())


def ai_deploy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AI_DEPLOY), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=120,
    )


def make_repo(tmp_path: Path) -> Path:
    """A work tree whose app (in app/) has ignored, nested-ignored, excluded, tracked-but-ignored
    and untracked files; returns the app directory."""
    repo = tmp_path / "repo"
    app = copy_example(repo / "app")
    git(repo, "init", "-q")
    write(repo, {".gitignore": "dist/\n*.log\n"})
    (repo / ".git" / "info" / "exclude").write_text("notes.txt\n")
    write(
        app,
        {
            "dist/ai-server-old.tar.gz": "an old artifact\n",
            "dist/keep.txt": "tracked although dist/ is ignored\n",
            "debug.log": "ignored\n",
            "kept.log": "tracked although *.log is ignored\n",
            "notes.txt": "excluded by .git/info/exclude\n",
            "pkg/.gitignore": "generated.py\n",
            "pkg/generated.py": "ignored by the nested .gitignore\n",
            "pkg/mod.py": "X = 1\n",
            "untracked.py": "neither tracked nor ignored\n",
            "ignored-only/a.log": "a directory holding only ignored files\n",
            ".env": "SECRET=1\n",
        },
    )
    (app / "empty").mkdir()
    git(repo, "add", ".gitignore", "app/main.py", "app/pyproject.toml", "app/uv.lock")
    git(repo, "add", "app/README.md", "app/pkg")
    git(repo, "add", "-f", "app/dist/keep.txt", "app/kept.log", "app/.env")
    git(repo, "commit", "-q", "-m", "app")
    return app


SHIPPED_FROM_REPO = {
    "README.md",
    "main.py",
    "engine.py",
    "pyproject.toml",
    "uv.lock",
    "tests",
    "tests/test_main.py",
    "tests/test_engine.py",
    "dist",
    "dist/keep.txt",
    "kept.log",
    "pkg",
    "pkg/.gitignore",
    "pkg/mod.py",
    "untracked.py",
}


def test_in_a_work_tree_only_what_git_sees_is_shipped(tmp_path: Path) -> None:
    app = make_repo(tmp_path)

    artifact = build_artifact(app, tmp_path / "out")

    assert member_names(artifact) == SHIPPED_FROM_REPO


def test_outside_a_work_tree_everything_but_the_fixed_exclusions_is_shipped(
    tmp_path: Path,
) -> None:
    app = make_repo(tmp_path)
    shutil.rmtree(app.parent / ".git")

    names = member_names(build_artifact(app, tmp_path / "out"))

    assert {"dist/ai-server-old.tar.gz", "debug.log", "pkg/generated.py", "empty"} <= names
    assert ".env" not in names


def test_odd_file_names_survive_the_git_listing(tmp_path: Path) -> None:
    app = make_repo(tmp_path)
    odd = ["we ird\nname.py", "tab\there.py", '"quoted".py', "caf\udce9.py"]
    for name in odd:
        (app / name).write_bytes(b"odd\n")

    names = member_names(build_artifact(app, tmp_path / "out"))

    assert names == SHIPPED_FROM_REPO | set(odd)


def test_a_nested_repository_is_listed_by_its_own_rules(tmp_path: Path) -> None:
    app = make_repo(tmp_path)
    lib = app / "vendor" / "lib"
    write(lib, {"lib.py": "Y = 2\n", ".gitignore": "build/\n", "build/out.so": "binary\n"})
    git(lib, "init", "-q")

    names = member_names(build_artifact(app, tmp_path / "out"))

    assert names - SHIPPED_FROM_REPO == {
        "vendor",
        "vendor/lib",
        "vendor/lib/.gitignore",
        "vendor/lib/lib.py",
    }


def test_a_required_file_git_ignores_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    app = copy_example(repo)
    git(repo, "init", "-q")
    write(repo, {".gitignore": "uv.lock\n"})

    with pytest.raises(ArtifactError, match=r"uv\.lock is ignored by git.*git add -f uv\.lock"):
        build_artifact(app, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the repository to another uid")
def test_a_work_tree_git_refuses_to_read_is_refused_not_packed_whole(tmp_path: Path) -> None:
    app = make_repo(tmp_path)
    for root, dirs, files in os.walk(app.parent):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), 54321, 54321)
    os.lchown(app.parent, 54321, 54321)

    with pytest.raises(ArtifactError, match=r"git cannot read the work tree.*dubious ownership"):
        build_artifact(app, tmp_path / "out")


def add_dependency(app: Path) -> None:
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text()
    assert '    "uvicorn",\n' in text
    pyproject.write_text(text.replace('    "uvicorn",\n', '    "uvicorn",\n    "httpx",\n'))


def test_a_stale_lock_is_refused_naming_the_fix(tmp_path: Path) -> None:
    app = copy_example(tmp_path / "app")
    add_dependency(app)

    with pytest.raises(ArtifactError) as caught:
        build_artifact(app, tmp_path / "out", lock_check=True)

    message = str(caught.value)
    assert f"uv.lock in {app} does not match its pyproject.toml" in message
    assert f"run `uv lock` in {app}, commit uv.lock" in message
    assert not (tmp_path / "out").exists()


def test_a_consistent_lock_passes_offline_with_an_empty_cache(tmp_path: Path) -> None:
    app = copy_example(tmp_path / "app")

    artifact = build_artifact(app, tmp_path / "out", lock_check=True)

    assert "uv.lock" in member_names(artifact)


def test_without_uv_the_check_says_what_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = copy_example(tmp_path / "app")
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    if find_uv() is not None:
        pytest.skip("a uv lies beside the running Python")

    with pytest.raises(ArtifactError, match=rf"uv is needed.*{NO_LOCK_CHECK_ENV}=1"):
        build_artifact(app, tmp_path / "out", lock_check=True)


def test_cli_builds_what_git_sees_with_a_checksum_sha256sum_accepts(tmp_path: Path) -> None:
    app = make_repo(tmp_path)
    out = tmp_path / "out"

    result = ai_deploy("artifact", "build", str(app), "-o", str(out))

    assert result.returncode == 0, result.stderr
    artifact = Path(result.stdout.strip())
    assert member_names(artifact) == SHIPPED_FROM_REPO
    check = subprocess.run(
        ["sha256sum", "--check", f"{artifact.name}.sha256"], cwd=out, capture_output=True
    )
    assert check.returncode == 0, check.stdout


def test_cli_refuses_a_stale_lock(tmp_path: Path) -> None:
    app = copy_example(tmp_path / "app")
    add_dependency(app)

    result = ai_deploy("artifact", "build", str(app), "-o", str(tmp_path / "out"))

    assert result.returncode == 1
    assert result.stderr.startswith(f"ai-deploy: error: uv.lock in {app} does not match")
    assert "run `uv lock`" in result.stderr and "commit uv.lock" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_accepts_a_consistent_lock(tmp_path: Path) -> None:
    app = copy_example(tmp_path / "app")

    result = ai_deploy("artifact", "build", str(app), "-o", str(tmp_path / "out"))

    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_file()


def test_cli_skips_the_check_only_when_told_and_says_so(tmp_path: Path) -> None:
    app = copy_example(tmp_path / "app")
    add_dependency(app)

    skipped = ai_deploy(
        "artifact", "build", str(app), "-o", str(tmp_path / "out"), env={NO_LOCK_CHECK_ENV: "1"}
    )
    unclear = ai_deploy(
        "artifact", "build", str(app), "-o", str(tmp_path / "o2"), env={NO_LOCK_CHECK_ENV: "on"}
    )

    assert skipped.returncode == 0, skipped.stderr
    assert f"uv.lock not checked against pyproject.toml ({NO_LOCK_CHECK_ENV}" in skipped.stderr
    assert unclear.returncode == 1
    assert f"{NO_LOCK_CHECK_ENV}='on' is not understood" in unclear.stderr


def test_cli_without_uv_says_how_to_skip(tmp_path: Path) -> None:
    app = copy_example(tmp_path / "app")
    bare = tmp_path / "bin"
    bare.mkdir()
    if shutil.which("uv", path=str(AI_DEPLOY.parent)):
        pytest.skip("a uv lies beside ai-deploy")

    result = ai_deploy(
        "artifact", "build", str(app), "-o", str(tmp_path / "out"), env={"PATH": str(bare)}
    )

    assert result.returncode == 1
    assert "uv is needed to check" in result.stderr
    assert f"set {NO_LOCK_CHECK_ENV}=1 to build without the check" in result.stderr
