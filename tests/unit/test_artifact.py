"""The release artifact: deterministic bytes, a content-derived id, and nothing secret inside."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from ai_deploy.artifact.build import (
    ArtifactError,
    build_artifact,
    release_id_from_artifact,
    sha256_file,
)
from ai_deploy.artifact.check import ArtifactLimits, check_artifact

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

    assert artifact.name == f"app-{artifact_id}.tar.gz"
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
    assert artifact.name == f"app-{release}.tar.gz"
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


# --- the deployer's check: hostile artifacts (issue 10) --------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]
GOOD = {"pyproject.toml": b'[project]\nname = "app"\n', "uv.lock": b"version = 1\n"}


def reg(name: str, data: bytes = b"x\n", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def sym(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def hard(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def tar_of(path: Path, members: list[Member], *, base: bool = True) -> Path:
    """A tar.gz of MEMBERS exactly as given (after a good app's files when BASE)."""
    if base:
        members = [reg(n, d) for n, d in {**GOOD, "main.py": b"app = None\n"}.items()] + members
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


# The chain: each link looks contained on its own; together they climb out, and
# REVISION then names /root/canary.
CHAIN = [
    sym("a/u1", ".."),
    sym("a/b/u2", "../u1/.."),
    sym("a/b/c/u3", "../u2/.."),
    sym("a/b/c/d/u4", "../u3/.."),
    sym("a/b/c/d/e/u5", "../u4/.."),
    sym("REVISION", "a/b/c/d/e/u5/root/canary"),
]

HOSTILE: dict[str, tuple[list[Member], str]] = {
    "link-chain": (CHAIN, r"link 'a/b/u2' -> '\.\./u1/\.\.' points outside the release"),
    "hard-link-out": ([hard("passwd", "../../../etc/passwd")], "'passwd' is a hard link"),
    "hard-link-in": ([hard("copy.py", "main.py")], "'copy.py' is a hard link"),
    "absolute-link": ([sym("data", "/etc")], "'data' points to the absolute path '/etc'"),
    "link-through-link": (
        [sym("sub", "."), reg("sub/x.py")],
        "member 'sub/x.py' passes through the link 'sub'",
    ),
    "later-link-redirects": (
        # x/.. is the root when 'x' is a directory; once 'x' is a link to 'a/..' (the root
        # too), 'l' -> x/../.. leaves it: only a check of the whole tree sees that.
        [sym("l", "x/y/../.."), sym("x", "z/..")],
        "",
    ),
    "fifo": ([special("pipe", tarfile.FIFOTYPE)], "'pipe' is a device or fifo"),
    "device": ([special("disk", tarfile.BLKTYPE)], "'disk' is a device or fifo"),
    "type-change": ([reg("pkg/a.py"), reg("pkg")], "'pkg' appears again and changes its type"),
    "link-twice": ([sym("x", "main.py"), sym("x", "uv.lock")], "'x' appears again"),
    "venv-link": ([sym(".venv", "a")], "'.venv' is made by the deploy"),
    "revision-link": ([sym("REVISION", "main.py")], "'REVISION' is a link"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_artifact_is_refused_naming_the_member(tmp_path: Path, kind: str) -> None:
    members, message = HOSTILE[kind]
    art = tar_of(tmp_path / "ai-server-bad.tar.gz", members)
    with pytest.raises(ArtifactError, match=message or "outside the release"):
        check_artifact(art)


@pytest.mark.parametrize("name", ["uv.lock", "pyproject.toml", "main.py"])
def test_a_linked_required_file_is_refused(tmp_path: Path, name: str) -> None:
    files = {**GOOD, "main.py": b"app = None\n", "real": b"version = 1\n"}
    members = [reg(n, d) for n, d in files.items() if n != name] + [sym(name, "real")]
    art = tar_of(tmp_path / "a.tar.gz", members, base=False)
    with pytest.raises(ArtifactError, match=rf"{re.escape(name)} is a link \(-> 'real'\)"):
        check_artifact(art)


def test_links_that_stay_inside_pass(tmp_path: Path) -> None:
    members = [sym("sub/up", ".."), sym("alias.py", "sub/up/main.py"), sym("dangling", "gone")]
    checked = check_artifact(tar_of(tmp_path / "a.tar.gz", members))
    assert checked.lock_hash == hashlib.sha256(GOOD["uv.lock"]).hexdigest()
    assert checked.members == 6


LIMITS = ArtifactLimits(max_bytes=1_000_000, max_members=100, max_ratio=50)


def test_too_big_is_refused_with_the_numbers(tmp_path: Path) -> None:
    art = tar_of(tmp_path / "a.tar.gz", [reg("model.bin", os.urandom(1_200_000))])
    with pytest.raises(ArtifactError) as caught:
        check_artifact(art, limits=LIMITS)
    message = str(caught.value)
    assert "expands to more than 1000000 bytes" in message
    assert "at least 1200" in message and "'model.bin'" in message
    assert "artifact_max_bytes=1000000" in message


def test_too_many_members_is_refused_with_the_numbers(tmp_path: Path) -> None:
    art = tar_of(tmp_path / "a.tar.gz", [reg(f"m{i}.py") for i in range(120)])
    with pytest.raises(ArtifactError, match=r"more than 100 members \(artifact_max_members=100"):
        check_artifact(art, limits=LIMITS)


def test_a_compression_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    art = tar_of(tmp_path / "a.tar.gz", [reg("zeros", bytes(900_000))])
    with pytest.raises(ArtifactError) as caught:
        check_artifact(art, limits=LIMITS)
    message = str(caught.value)
    assert "compressed bytes" in message and "artifact_max_ratio=50" in message
    assert f"from {art.stat().st_size} compressed" in message


def test_limits_are_read_from_group_data() -> None:
    limits = ArtifactLimits.defaults()
    assert limits.max_bytes == 4 * 1024**3 and limits.max_members == 50_000
    assert ArtifactLimits.from_data(
        {"artifact_max_bytes": 1, "artifact_max_members": 2, "artifact_max_ratio": 3}
    ) == ArtifactLimits(1, 2, 3.0)


@pytest.mark.parametrize("name", ["uv.lock", "pyproject.toml", "main.py"])
def test_build_refuses_a_linked_required_file(tmp_path: Path, name: str) -> None:
    src = make_app(tmp_path)
    (src / name).rename(src / "real")
    (src / name).symlink_to("real")
    with pytest.raises(ArtifactError, match=rf"{re.escape(name)} is a symbolic link"):
        build_artifact(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_what_build_makes_the_check_accepts(tmp_path: Path) -> None:
    src = make_app(tmp_path, {"sub/mod.py": ""})
    (src / "sub" / "up").symlink_to("..")
    (src / "alias.py").symlink_to("sub/up/main.py")
    checked = check_artifact(build_artifact(src, tmp_path / "out"))
    assert checked.lock_hash == hashlib.sha256(b"version = 1\n").hexdigest()


def test_the_artifact_is_named_after_the_apps_project_and_its_id_read_back(
    tmp_path: Path,
) -> None:
    src = make_app(tmp_path, {"pyproject.toml": '[project]\nname = "Sentiment_API"\n'})
    # An id with dashes: only the app's own name (read back from the archive) tells it apart.
    artifact = build_artifact(src, tmp_path / "out", artifact_id="v1-2")
    assert artifact.name == "sentiment-api-v1-2.tar.gz"
    assert release_id_from_artifact(artifact) == "v1-2"
    content = build_artifact(src, tmp_path / "content")
    assert release_id_from_artifact(content) == content.name.removeprefix("sentiment-api-")[:12]
    # Another app's name on the file is not taken for an id.
    stranger = artifact.rename(tmp_path / "ai-server-v1-2.tar.gz")
    assert release_id_from_artifact(stranger) == sha256_file(stranger)[:12]
    nameless = make_app(tmp_path / "nameless", {"pyproject.toml": "[tool.x]\n"})
    assert build_artifact(nameless, tmp_path / "n", artifact_id="a1").name == "app-a1.tar.gz"
