"""The release artifact: deterministic bytes, a content-derived id, and nothing secret inside."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from ai_deploy.artifact.build import (
    ArtifactError,
    build_artifact,
    release_id_from_artifact,
    sha256_file,
)

pytestmark = pytest.mark.unit

EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "ai-server"


def make_app(root: Path, files: dict[str, str] | None = None) -> Path:
    """A minimal app tree under ROOT/app with pyproject.toml, uv.lock and main.py."""
    src = root / "app"
    src.mkdir(parents=True)
    base = {
        "pyproject.toml": '[project]\nname = "app"\nversion = "0.1.0"\n',
        "uv.lock": "version = 1\n",
        "main.py": "print('hello')\n",
    }
    for rel, text in {**base, **(files or {})}.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def members(artifact: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(artifact, "r:gz") as tar:
        return {info.name: info for info in tar.getmembers()}


def member_names_in_order(artifact: Path) -> list[str]:
    with tarfile.open(artifact, "r:gz") as tar:
        return tar.getnames()


def test_example_app_builds_are_byte_identical(tmp_path: Path) -> None:
    first = build_artifact(EXAMPLE_APP, tmp_path / "one")
    second = build_artifact(EXAMPLE_APP, tmp_path / "two")

    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()
    assert sha256_file(first) == sha256_file(second)
    names = set(members(first))
    assert {"main.py", "pyproject.toml", "uv.lock"} <= names
    assert not any(name == ".venv" or name.startswith(".venv/") for name in names)


def test_secrets_venvs_caches_and_vcs_are_left_out(tmp_path: Path) -> None:
    src = make_app(
        tmp_path,
        {
            ".env": "SECRET=1\n",
            ".env.local": "SECRET=2\n",
            ".venv/x": "venv\n",
            "__pycache__/a.pyc": "bytecode",
            ".git/HEAD": "ref: refs/heads/main\n",
            "sub/.env": "SECRET=3\n",
            "sub/mod.py": "X = 1\n",
            "sub/__pycache__/mod.cpython-311.pyc": "bytecode",
            "sub/stray.pyc": "bytecode",
        },
    )

    artifact = build_artifact(src, tmp_path / "out")

    assert set(members(artifact)) == {"main.py", "pyproject.toml", "uv.lock", "sub", "sub/mod.py"}
    with tarfile.open(artifact, "r:gz") as tar:
        for info in tar.getmembers():
            if info.isfile():
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                assert b"SECRET" not in data


def test_members_are_normalized_and_sorted(tmp_path: Path) -> None:
    src = make_app(tmp_path, {"b/z.py": "", "b/a.py": "", "a.txt": "", "run.sh": "#!/bin/sh\n"})
    (src / "run.sh").chmod(0o700)
    (src / "main.py").chmod(0o600)

    artifact = build_artifact(src, tmp_path / "out")

    names = member_names_in_order(artifact)
    assert names == [
        "a.txt",
        "b",
        "b/a.py",
        "b/z.py",
        "main.py",
        "pyproject.toml",
        "run.sh",
        "uv.lock",
    ]
    infos = members(artifact)
    for info in infos.values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
        assert not info.name.startswith(("./", "/"))
    assert infos["b"].isdir() and infos["b"].mode == 0o755
    assert infos["run.sh"].mode == 0o755
    assert infos["main.py"].mode == 0o644
    assert infos["a.txt"].mode == 0o644

    header = artifact.read_bytes()[:10]
    assert header[:2] == b"\x1f\x8b"
    assert header[4:8] == b"\0\0\0\0", "gzip header must carry no timestamp"
    assert not header[3] & 0x08, "gzip header must carry no file name"


@pytest.mark.parametrize("required", ["uv.lock", "pyproject.toml"])
def test_source_without_required_file_is_refused(tmp_path: Path, required: str) -> None:
    src = make_app(tmp_path)
    (src / required).unlink()

    with pytest.raises(ArtifactError, match=required.replace(".", r"\.")):
        build_artifact(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ArtifactError, match="does not exist") as excinfo:
        build_artifact(missing, tmp_path / "out")
    assert str(missing) in str(excinfo.value)


@pytest.mark.parametrize("artifact_id", ["0123abcd", "v1.2.3", "build_42", "a" * 64, "A-b.c_d"])
def test_explicit_id_names_the_artifact(tmp_path: Path, artifact_id: str) -> None:
    src = make_app(tmp_path)

    artifact = build_artifact(src, tmp_path / "out", artifact_id=artifact_id)

    assert artifact.name == f"ai-server-{artifact_id}.tar.gz"
    assert release_id_from_artifact(artifact) == artifact_id


@pytest.mark.parametrize(
    "artifact_id", ["", ".hidden", "-rf", "a/b", "..", "a" * 65, "sp ace", "caf\u00e9", "x\n"]
)
def test_invalid_explicit_id_is_refused(tmp_path: Path, artifact_id: str) -> None:
    src = make_app(tmp_path)

    with pytest.raises(ArtifactError, match="artifact id"):
        build_artifact(src, tmp_path / "out", artifact_id=artifact_id)
    assert not (tmp_path / "out").exists()


def test_checksum_file_matches_the_artifact(tmp_path: Path) -> None:
    artifact = build_artifact(make_app(tmp_path), tmp_path / "out")

    checksum_file = artifact.with_name(artifact.name + ".sha256")
    expected = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert checksum_file.read_text() == f"{expected}  {artifact.name}\n"
    assert sha256_file(artifact) == expected
    assert sorted(p.name for p in artifact.parent.iterdir()) == [
        artifact.name,
        checksum_file.name,
    ]


def test_content_id_ignores_mtimes_but_follows_content_and_mode(tmp_path: Path) -> None:
    src = make_app(tmp_path, {"sub/mod.py": "X = 1\n"})
    first = build_artifact(src, tmp_path / "a")

    for path in [src, *src.rglob("*")]:
        os.utime(path, (1_700_000_000, 1_700_000_000))
    touched = build_artifact(src, tmp_path / "b")
    assert touched.name == first.name
    assert touched.read_bytes() == first.read_bytes()

    (src / "sub" / "mod.py").write_text("X = 2\n")
    edited = build_artifact(src, tmp_path / "c")
    assert edited.name != first.name

    (src / "sub" / "mod.py").write_text("X = 1\n")
    (src / "sub" / "mod.py").chmod(0o755)
    made_executable = build_artifact(src, tmp_path / "d")
    assert made_executable.name not in (first.name, edited.name)

    (src / "sub" / "mod.py").chmod(0o644)
    (src / "sub" / "mod.py").rename(src / "sub" / "renamed.py")
    renamed = build_artifact(src, tmp_path / "e")
    assert renamed.name not in (first.name, edited.name, made_executable.name)


def test_content_id_is_the_release_id(tmp_path: Path) -> None:
    artifact = build_artifact(make_app(tmp_path), tmp_path / "out")

    release = release_id_from_artifact(artifact)
    assert artifact.name == f"ai-server-{release}.tar.gz"
    assert len(release) == 12 and all(c in "0123456789abcdef" for c in release)


def test_release_id_of_other_names_is_the_sha256_prefix(tmp_path: Path) -> None:
    built = build_artifact(make_app(tmp_path), tmp_path / "out")
    renamed = built.rename(tmp_path / "bundle.tar.gz")

    assert release_id_from_artifact(renamed) == sha256_file(renamed)[:12]
    assert release_id_from_artifact(tmp_path / "web-abc123.tar.gz", name="web") == "abc123"
    with pytest.raises(ArtifactError, match=r"other\.tar\.gz"):
        release_id_from_artifact(tmp_path / "other.tar.gz")


def test_custom_name_prefixes_the_file(tmp_path: Path) -> None:
    artifact = build_artifact(make_app(tmp_path), tmp_path / "out", artifact_id="abc", name="web")

    assert artifact.name == "web-abc.tar.gz"
    assert release_id_from_artifact(artifact, name="web") == "abc"


def test_symlink_inside_the_tree_is_kept_as_a_link(tmp_path: Path) -> None:
    src = make_app(tmp_path, {"sub/mod.py": ""})
    (src / "alias.py").symlink_to("main.py")
    (src / "sub" / "up").symlink_to("..")

    infos = members(build_artifact(src, tmp_path / "out"))

    assert infos["alias.py"].issym() and infos["alias.py"].linkname == "main.py"
    assert infos["sub/up"].issym() and infos["sub/up"].linkname == ".."


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("escape", "../outside.txt"),
        ("sub/escape", "../../outside.txt"),
        ("absolute", "/etc/passwd"),
        # Looks contained by name (sub/up/../x is sub/x), but sub/up is the root, so it is not.
        ("sub/sneaky", "up/../x"),
    ],
)
def test_symlink_leaving_the_tree_is_refused(tmp_path: Path, link: str, target: str) -> None:
    src = make_app(tmp_path, {"sub/mod.py": ""})
    (tmp_path / "outside.txt").write_text("secret\n")
    (src / "sub" / "up").symlink_to("..")
    (src / link).symlink_to(target)

    with pytest.raises(ArtifactError, match=link):
        build_artifact(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_special_files_are_refused(tmp_path: Path) -> None:
    src = make_app(tmp_path)
    os.mkfifo(src / "pipe")

    with pytest.raises(ArtifactError, match="pipe"):
        build_artifact(src, tmp_path / "out")


def test_output_directory_inside_the_source_is_left_out(tmp_path: Path) -> None:
    src = make_app(tmp_path)

    first = build_artifact(src, src / "dist")
    second = build_artifact(src, src / "dist")

    assert first == second
    assert "dist" not in member_names_in_order(second)
    with pytest.raises(ArtifactError, match="source directory"):
        build_artifact(src, src)


def test_failed_write_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_app(tmp_path)
    outdir = tmp_path / "out"

    def refuse(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("ai_deploy.artifact.build.os.replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        build_artifact(src, outdir)
    assert list(outdir.iterdir()) == []
