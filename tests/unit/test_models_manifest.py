"""models.toml: a good manifest parsed into frozen data, and every rule refused with a message
naming its entry (models[i] "name" files[j] "path"), all problems at once."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ai_deploy.artifact.models_manifest import (
    ManifestError,
    Model,
    ModelFile,
    blobs,
    manifest_from_artifact,
    parse_manifest,
    total_size,
)

pytestmark = pytest.mark.unit

SHA_A, SHA_B = "a" * 64, "0123456789abcdef" * 4
FILE = {"path": "weights.bin", "url": "gs://bucket/models/demo/weights.bin", "sha256": SHA_A}
FILE = {**FILE, "size": 123456789}
MODEL = {"name": "demo-model", "version": "2026-11-01", "files": [FILE]}
WHERE = 'models.toml: models[0] "demo-model" files[0] "weights.bin"'


def toml(*models: dict[str, Any], top: str = "") -> str:
    """TOML text for MODELS; JSON's strings, numbers and booleans are TOML's too."""
    lines = [top]
    for model in models:
        lines.append("[[models]]")
        files = model.get("files")
        tables = isinstance(files, list) and files and all(isinstance(f, dict) for f in files)
        lines += [f"{k} = {json.dumps(v)}" for k, v in model.items() if k != "files" or not tables]
        for file in files if tables else []:
            lines.append("[[models.files]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in file.items()]
    return "\n".join(lines) + "\n"


def with_file(**changes: Any) -> str:
    file = {k: v for k, v in {**FILE, **changes}.items() if v is not None}
    return toml({**MODEL, "files": [file]})


def problems(text: str, **kwargs: Any) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, **kwargs)
    return str(caught.value).splitlines()


def test_a_good_manifest_becomes_frozen_models() -> None:
    second = {**FILE, "path": "tokenizer/vocab.json", "sha256": SHA_B, "size": 0}
    second["url"] = "https://models.example.com/demo/vocab.json?v=2"
    other = {"name": "other.model_2", "version": "V1.0-rc_1", "files": [{**FILE, "path": "w"}]}
    models = parse_manifest(toml({**MODEL, "files": [FILE, second]}, other))
    demo = Model(
        "demo-model",
        "2026-11-01",
        (
            ModelFile("weights.bin", FILE["url"], SHA_A, 123456789),
            ModelFile("tokenizer/vocab.json", second["url"], SHA_B, 0),
        ),
    )
    other_file = ModelFile("w", FILE["url"], SHA_A, 123456789)
    assert models == [demo, Model("other.model_2", "V1.0-rc_1", (other_file,))]
    with pytest.raises(dataclasses.FrozenInstanceError):
        models[0].name = "x"  # type: ignore[misc]
    assert list(blobs(models)) == [SHA_A, SHA_B]  # each content once, in manifest order
    assert blobs(models)[SHA_A].path == "weights.bin"
    assert total_size(models) == 123456789


def test_no_models_is_an_empty_list() -> None:
    assert parse_manifest("") == []
    assert parse_manifest("models = []\n") == []


def test_the_message_names_the_entry_as_documented() -> None:
    first = {**MODEL, "name": "first"}
    text = toml(first, {**MODEL, "files": [{**FILE, "sha256": "a" * 63}]})
    assert problems(text) == [
        'models.toml: models[1] "demo-model" files[0] "weights.bin": '
        "sha256 must be 64 hex characters (got 63)"
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sha256": "a" * 65}, "sha256 must be 64 hex characters (got 65)"),
        (
            {"sha256": "A" * 64},
            f"sha256 must be lower case (got upper case letters): write {SHA_A}",
        ),
        ({"sha256": "g" + "a" * 63}, "sha256 must be 64 hex characters (got 64, with 'g')"),
        ({"sha256": 5}, "sha256 must be a string (got an integer)"),
        ({"size": True}, "size must be an integer (got a boolean)"),
        ({"size": 1.5}, "size must be an integer (got a float)"),
        ({"size": "12"}, "size must be an integer (got a string)"),
        ({"size": -1}, "size must not be negative (got -1)"),
        ({"path": "../weights.bin"}, "path contains '..'"),
        ({"path": "a/../../b"}, "path contains '..'"),
        ({"path": "/weights.bin"}, "path is absolute"),
        ({"path": "a//b"}, "path has an empty or '.' part"),
        ({"path": "./a"}, "path has an empty or '.' part"),
        ({"path": "a/"}, "path has an empty or '.' part"),
        ({"path": "."}, "path has an empty or '.' part"),
        ({"path": ""}, "path has an empty or '.' part"),
        ({"path": "a\\b"}, "path contains a backslash"),
        ({"path": "a\x00b"}, "path contains a control character"),
        ({"path": "a\nb"}, "path contains a control character"),
        ({"path": "x" * 256}, "path is longer than 255 bytes"),
        ({"path": "é" * 128}, "path is longer than 255 bytes"),
        ({"path": ["a"]}, "path must be a string (got an array)"),
        ({"url": "http://example.com/w"}, "plain http:// is refused"),
        ({"url": "ftp://example.com/w"}, "must start with https:// or gs://"),
        ({"url": "s3://bucket/w"}, "must start with https:// or gs://"),
        ({"url": "weights.bin"}, "must start with https:// or gs://"),
        ({"url": "gs://bucket"}, "must be gs://BUCKET/OBJECT"),
        ({"url": "gs://bucket/"}, "must be gs://BUCKET/OBJECT"),
        ({"url": "gs:///object"}, "must be gs://BUCKET/OBJECT"),
        ({"url": "gs://bucket/" + "o" * 1025}, "must be gs://BUCKET/OBJECT"),
        ({"url": "gs://Bucket/w"}, "'Bucket' is not a bucket name"),
        ({"url": "gs://ab/w"}, "'ab' is not a bucket name"),
        ({"url": "gs://-bucket/w"}, "is not a bucket name"),
        ({"url": "gs://bucket-/w"}, "is not a bucket name"),
        ({"url": "gs://a..b/w"}, "is not a bucket name"),
        ({"url": f"gs://{'a' * 64}/w"}, "is not a bucket name"),
        ({"url": f"gs://{'a' * 64}.b/w"}, "is not a bucket name"),
        ({"url": "gs://" + ".".join(["a" * 63] * 3) + f".{'b' * 31}/w"}, "is not a bucket name"),
        ({"url": "gs://goog-models/w"}, "is not a bucket name"),
        ({"url": "gs://my-google-models/w"}, "is not a bucket name"),
        ({"url": "gs://192.168.1.10/w"}, "is not a bucket name"),
        ({"url": "gs://bucket/\x07"}, "no control characters"),
        ({"url": "https://user:secret@example.com/w"}, "no user@"),
        ({"url": "https://example.com/a b"}, "no whitespace"),
        ({"url": "https:///w"}, "has no host"),
        ({"url": "https://example.com:99999/w"}, "has a bad port"),
        ({"url": "https://[::1/w"}, "is not a valid URL (Invalid IPv6 URL)"),
        ({"url": "https://[::1"}, "is not a valid URL"),
        ({"url": "https://exämple.com/w"}, "write the host name in ASCII"),
        ({"url": "https://example.com/" + "x" * 2048}, "at most 2048 characters"),
        ({"url": None}, "missing 'url'"),
        ({"sha265": SHA_A, "sha256": None}, "unknown key 'sha265' (did you mean 'sha256'?"),
    ],
)
def test_a_bad_file_entry_is_refused_naming_it(changes: dict[str, Any], expected: str) -> None:
    found = problems(with_file(**changes))
    path = changes.get("path", FILE["path"])
    where = WHERE.replace('"weights.bin"', json.dumps(path, ensure_ascii=False))
    where = where if isinstance(path, str) else 'models.toml: models[0] "demo-model" files[0]'
    assert any(line.startswith(where + ": ") and expected in line for line in found), found


@pytest.mark.parametrize(
    "url",
    [
        "gs://a.b-c_d/models/x y+z#1?.bin",  # object names are taken as written, then encoded
        f"gs://{'a' * 63}/w",
        "gs://" + ".".join(["a" * 63] * 3) + ".abcdefghijklmnopqrstuvwxyz0123/w",  # 222 long
        "https://example.com:8443/a/b?signature=x",
        "https://[::1]:8443/w",
        "https://example.com/modèles/poids.bin",  # sent percent-encoded by the fetcher
    ],
)
def test_good_urls_pass(url: str) -> None:
    assert parse_manifest(with_file(url=url))[0].files[0].url == url


def test_plain_http_only_when_allowed() -> None:
    text = with_file(url="http://10.0.0.5:8000/w")
    assert "models_allow_http = true" in problems(text)[0]
    assert parse_manifest(text, allow_http=True)[0].files[0].url == "http://10.0.0.5:8000/w"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "Demo-Model"}, 'name "Demo-Model" must match [a-z0-9][a-z0-9._-]* (lower case'),
        ({"name": "-demo"}, 'name "-demo" must match [a-z0-9][a-z0-9._-]*'),
        ({"name": "demo/model"}, "must match"),
        ({"name": "d" * 65}, "at most 64 characters"),
        ({"name": 5}, "name must be a string (got an integer)"),
        ({"version": "2026 11"}, 'version "2026 11" must match [A-Za-z0-9][A-Za-z0-9._-]*'),
        ({"version": ".hidden"}, "must match"),
        ({"version": "v" * 65}, "at most 64 characters"),
        ({"files": []}, "files is empty"),
        ({"files": "weights.bin"}, "files must be an array (got a string)"),
        ({"files": None}, "missing 'files'"),
        ({"versoin": "1", "version": None}, "unknown key 'versoin' (did you mean 'version'?"),
    ],
)
def test_a_bad_model_is_refused_naming_it(changes: dict[str, Any], expected: str) -> None:
    model = {k: v for k, v in {**MODEL, **changes}.items() if v is not None}
    name = model["name"]
    where = (
        f"models.toml: models[0] {json.dumps(name)}"
        if isinstance(name, str)
        else "models.toml: models[0]:"
    )
    found = problems(toml(model))
    assert any(line.startswith(where) and expected in line for line in found), found


def test_unknown_keys_name_the_allowed_ones() -> None:
    assert problems(toml(MODEL, top='model = "x"')) == [
        "models.toml: unknown key 'model' (did you mean 'models'? allowed: models)"
    ]
    found = problems(with_file(mirror="https://x/y"))
    assert found == [f"{WHERE}: unknown key 'mirror' (allowed: path, url, sha256, size)"]


def test_tables_of_the_wrong_shape() -> None:
    assert problems('models = "demo"\n') == ["models.toml: models must be an array (got a string)"]
    assert problems("models = [1]\n") == ["models.toml: models[0]: is an integer, not a table"]
    text = 'models = [{name = "m", version = "1", files = [2]}]\n'
    assert problems(text) == ['models.toml: models[0] "m" files[0]: is an integer, not a table']


def test_not_toml_at_all() -> None:
    assert problems("[[models]\nname=")[0].startswith("models.toml: not valid TOML: ")


def test_names_and_paths_are_unique_and_files_do_not_nest() -> None:
    files = [
        FILE,
        {**FILE, "path": "weights.bin"},
        {**FILE, "path": "weights.bin/inner"},
        {**FILE, "path": "dir/a"},
        {**FILE, "path": "dir"},
        {**FILE, "path": "dir/b"},
    ]
    found = problems(toml({**MODEL, "files": files}, MODEL))
    model = 'models.toml: models[0] "demo-model"'
    assert found == [
        f"{model} files[1] \"weights.bin\": path 'weights.bin' clashes with files[0]: same path",
        f"{model} files[2] \"weights.bin/inner\": path 'weights.bin/inner' clashes with "
        "files[0]: 'weights.bin' is a file there",
        f"{model} files[4] \"dir\": path 'dir' clashes with files[3]: 'dir' is a dir there",
        'models.toml: models[1] "demo-model": name is already used by models[0]',
    ]


def test_the_same_path_in_two_models_is_fine() -> None:
    other = {**MODEL, "name": "other"}
    assert [m.name for m in parse_manifest(toml(MODEL, other))] == ["demo-model", "other"]


def test_one_content_has_one_size() -> None:
    other = {**MODEL, "name": "other", "files": [{**FILE, "path": "w2", "size": 5}]}
    assert problems(toml(MODEL, other)) == [
        f'models.toml: models[1] "other" files[0] "w2": sha256 {SHA_A} has size 5 here but '
        f'123456789 at models[0] "demo-model" files[0] "weights.bin"'
    ]


def test_every_problem_is_reported_at_once() -> None:
    bad = {**FILE, "sha256": "A" * 64, "size": -1, "url": "ftp://x/y", "path": "../w"}
    found = problems(toml({**MODEL, "name": "Bad", "files": [bad]}, {**MODEL, "version": "a b"}))
    assert len(found) == 6, found
    assert all(line.startswith("models.toml: models[") for line in found)


def test_a_message_with_a_strange_name_stays_one_line() -> None:
    found = problems(toml({**MODEL, "name": "evil\nname"}))
    assert found == [
        'models.toml: models[0] "evil\\nname": name "evil\\nname" must match '
        "[a-z0-9][a-z0-9._-]*, at most 64 characters"
    ]


def artifact(tmp_path: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """A tar.gz with MEMBERS: (name, bytes) for a file, (name, "->target") for a link."""
    path = tmp_path / "app-1.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_the_artifact_root_holds_the_manifest(tmp_path: Path) -> None:
    text = toml(MODEL).encode()
    found = manifest_from_artifact(artifact(tmp_path, [("main.py", b""), ("./models.toml", text)]))
    assert [m.name for m in found] == ["demo-model"]
    assert manifest_from_artifact(artifact(tmp_path, [("main.py", b"")])) == []
    assert manifest_from_artifact(artifact(tmp_path, [("sub/models.toml", text)])) == []


def test_the_last_member_of_that_name_wins_as_when_extracted(tmp_path: Path) -> None:
    other = toml({**MODEL, "name": "second"}).encode()
    path = artifact(tmp_path, [("models.toml", toml(MODEL).encode()), ("models.toml", other)])
    assert [m.name for m in manifest_from_artifact(path)] == ["second"]
    path = artifact(tmp_path, [("models.toml", toml(MODEL).encode()), ("models.toml", "->x")])
    with pytest.raises(ManifestError, match=r"app-1\.tar\.gz: models\.toml must be a regular"):
        manifest_from_artifact(path)


def test_artifact_manifest_errors_name_the_artifact(tmp_path: Path) -> None:
    path = artifact(tmp_path, [("models.toml", with_file(size=-1).encode())])
    with pytest.raises(ManifestError) as caught:
        manifest_from_artifact(path)
    assert str(caught.value).startswith('app-1.tar.gz: models.toml: models[0] "demo-model"')
    path = artifact(tmp_path, [("models.toml", with_file(url="http://x/w").encode())])
    assert manifest_from_artifact(path, allow_http=True)[0].files[0].url == "http://x/w"


def test_a_huge_or_binary_manifest_is_refused(tmp_path: Path) -> None:
    huge = b"# " + b"x" * (1 << 20) + b"\n"
    with pytest.raises(ManifestError, match=r"at most 1 MiB \(1048579 bytes\)"):
        manifest_from_artifact(artifact(tmp_path, [("models.toml", huge)]))
    with pytest.raises(ManifestError, match=r"is not UTF-8 text \(byte 0\)"):
        manifest_from_artifact(artifact(tmp_path, [("models.toml", b"\xff\xfe")]))


def test_a_file_that_is_not_a_tar_gz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app-1.tar.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(ManifestError, match=r"app-1\.tar\.gz: not a readable tar\.gz"):
        manifest_from_artifact(path)
