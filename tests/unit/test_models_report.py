"""Each release's models as `releases` and `status` report them, from what the host prints."""

from __future__ import annotations

import json

import pytest

from ai_deploy.commands.releases import Kept, render, rows
from ai_deploy.host.release.models import MARK, parse_models

pytestmark = pytest.mark.unit

A, B = "a" * 64, "b" * 64


def record(version: str, *files: tuple[str, str, int]) -> str:
    return json.dumps(
        [{"name": "demo", "version": version,
          "files": [{"path": p, "sha256": s, "size": n} for p, s, n in files]}]
    )  # fmt: skip


def test_models_of_each_release_with_size_and_whether_every_file_is_verified() -> None:
    lines = [
        f"{MARK} models r1 {record('v1', ('w.bin', A, 100), ('t.json', B, 5))}",
        f"{MARK} models r2 {record('v2', ('w.bin', A, 100))}",
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
    listed.append(f"{MARK} verified {A}.verified")
    table = rows("r2", None, [Kept("r2", 4, 0.0, True)], [], parse_models(listed))
    text = "\n".join(render("host-1", table, now=0.0))
    assert "model demo v2, 3.0 MiB, verified" in text
