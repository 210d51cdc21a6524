"""Each release's models as `releases` and `status` report them, from what the host prints."""

from __future__ import annotations

import json

import pytest

from ai_deploy.commands.releases import Kept, render, rows
from ai_deploy.host.release.models import MARK, parse_models

pytestmark = pytest.mark.unit

A, B = "a" * 64, "b" * 64
STORE = "/app/ai-server/models/blobs"


def record(version: str, *files: tuple[str, str, int]) -> str:
    return json.dumps(
        [{"name": "demo", "version": version,
          "files": [{"path": p, "sha256": s, "size": n} for p, s, n in files]}]
    )  # fmt: skip


def leads(release: str, path: str, target: str) -> str:
    """The line models_script prints for a file of RELEASE's tree and where it leads."""
    return f"{MARK} file {release}/models/demo/{path}\t{target}"


def test_models_of_each_release_with_size_and_whether_every_file_is_verified() -> None:
    lines = [
        f"{MARK} models r1 {record('v1', ('w.bin', A, 100), ('t.json', B, 5))}",
        leads("r1", "w.bin", f"{STORE}/{A}"),
        leads("r1", "t.json", f"{STORE}/{B}"),
        f"{MARK} models r2 {record('v2', ('w.bin', A, 100))}",
        leads("r2", "w.bin", f"{STORE}/{A}"),
        f"{MARK} models broken {{not json",
        f"{MARK} verified {A}.verified",
        "noise",
    ]
    found = parse_models(lines)
    assert found["r1"] == ({"name": "demo", "version": "v1", "size_bytes": 105, "verified": False},)
    assert found["r2"] == ({"name": "demo", "version": "v2", "size_bytes": 100, "verified": True},)
    assert "broken" not in found


def test_releases_prints_a_line_per_model() -> None:
    listed = [f"{MARK} models r2 {record('v2', ('w.bin', A, 3 * 2**20))}"]
    listed += [leads("r2", "w.bin", f"{STORE}/{A}"), f"{MARK} verified {A}.verified"]
    table = rows("r2", None, [Kept("r2", 4, 0.0, True)], [], parse_models(listed))
    text = "\n".join(render("host-1", table, now=0.0))
    assert "model demo v2, 3.0 MiB, verified" in text


@pytest.mark.parametrize(
    "target",
    [
        f"{STORE}/{B}",  # a verified blob, but not the one the record names
        f"/app/ai-server/models/demo/v1/{A}",  # a file named like the blob, outside the store
        "",  # a link that leads nowhere
    ],
)
def test_a_file_that_leads_elsewhere_than_its_recorded_blob_is_not_verified(target: str) -> None:
    lines = [f"{MARK} models r1 {record('v1', ('w.bin', A, 100))}", leads("r1", "w.bin", target)]
    lines += [f"{MARK} verified {A}.verified", f"{MARK} verified {B}.verified"]
    assert parse_models(lines)["r1"][0]["verified"] is False


@pytest.mark.parametrize(
    "files",
    [
        [{"path": "w.bin", "sha256": A, "size": "100"}],  # a size in words
        [{"path": "w.bin", "sha256": A, "size": None}],
        [{"path": "w.bin", "sha256": A, "size": [1]}],
        [{"path": "w.bin", "sha256": A, "size": 1e3}],
        [{"path": "w.bin", "sha256": A, "size": True}],
        ["w.bin"],  # not a table
        "w.bin",  # not a list
    ],
)
def test_a_record_not_of_the_deploys_shape_never_crashes_and_is_not_verified(
    files: object,
) -> None:
    text = json.dumps([{"name": "demo", "version": "v1", "files": files}, 7, "x"])
    lines = [f"{MARK} models r1 {text}", leads("r1", "w.bin", f"{STORE}/{A}")]
    lines.append(f"{MARK} verified {A}.verified")
    [model] = parse_models(lines)["r1"]
    assert model["name"] == "demo" and model["verified"] is False
    table = rows("r1", None, [Kept("r1", 4, 0.0, True)], [], parse_models(lines))
    assert "model demo v1" in "\n".join(render("host-1", table, now=0.0))


@pytest.mark.parametrize("text", ["7", '{"name": "demo"}', "null", '"x"'])
def test_a_record_that_is_not_a_list_lists_no_models(text: str) -> None:
    assert parse_models([f"{MARK} models r1 {text}"]) == {"r1": ()}
