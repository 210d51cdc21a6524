"""fetcher.py against inputs that once escaped it: a non-ASCII URL, a token that is not one line
(from the job or from the metadata server), a file shorter than its declared size whose sha256
is the one named, and a directory where a blob goes. Every run still ends with its RESULT line,
and no token is ever printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_models_fetcher import (  # the fixtures too
    ModelServer,
    blob,
    fetch,
    part,
    payload,
    server,
    sha,
    store,
)

pytestmark = pytest.mark.unit

SECRET = "second-half-of-the-token"
__all__ = ["server", "store"]  # the fixtures, shared with test_models_fetcher


def test_a_non_ascii_url_path_is_sent_percent_encoded(server: ModelServer, store: Path) -> None:
    item = server.put("modèles/poids-ü.bin", payload(20_000))
    assert "modèles/poids-ü.bin" in item["url"]
    run = fetch(store, server, [item])
    assert run.code == 0, run.lines
    assert blob(store, item).read_bytes() == payload(20_000)
    assert [r["path"] for r in server.requests()] == ["/mod%C3%A8les/poids-%C3%BC.bin"]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("token", [f"ya29.first\n{SECRET}", f"ya29 {SECRET}", f"\x00{SECRET}", 7])
def test_a_jobs_token_that_is_not_one_line_is_refused_unshown(
    server: ModelServer, store: Path, token: object
) -> None:
    (server.root / ".token").write_text(f"ya29.first\n{SECRET}")
    item = server.put("gcs/model-bucket/w.bin", payload(1000))
    run = fetch(store, server, [item], token=token)
    assert run.code == 2
    assert "token must be a string or null: one line of printable ASCII" in run.lines[-2]
    assert SECRET not in "\n".join(run.lines) + run.stderr
    assert "Traceback" not in run.stderr and server.requests() == []


def test_a_metadata_token_that_is_not_one_line_is_refused_unshown(
    server: ModelServer, store: Path
) -> None:
    (server.root / ".token").write_text(f"ya29.first\r\n{SECRET}")
    item = server.put("gcs/model-bucket/w.bin", payload(1000))
    run = fetch(store, server, [item])
    assert run.code == 5
    assert run.lines[-2] == "ERROR metadata server: its access_token is not one line"
    assert SECRET not in "\n".join(run.lines) + run.stderr
    assert "Traceback" not in run.stderr
    assert not blob(store, item).exists()


def test_a_file_shorter_than_its_size_is_refused_even_with_its_sha256(
    server: ModelServer, store: Path
) -> None:
    served = payload(1000)
    item = {**server.put("weights.bin", served), "size": 2000}  # the sha256 of what is served
    assert item["sha256"] == sha(served)
    for _ in range(2):
        run = fetch(store, server, [item])
        assert run.code == 4, run.lines
        assert run.lines[-2] == (
            f"MISMATCH demo/1/weights.bin expected={item['sha256']} got={item['sha256']} "
            "(1000 of 2000 bytes)"
        )
        assert not blob(store, item).exists() and not part(store, item).exists()
        assert not Path(f"{blob(store, item)}.verified").exists()


@pytest.mark.parametrize("mode", ["fetch", "verify"])
def test_a_directory_where_a_blob_goes_is_removed_and_the_file_fetched(
    server: ModelServer, store: Path, mode: str
) -> None:
    item = server.put("weights.bin", payload(5000))
    where = blob(store, item)
    (where / "inner").mkdir(parents=True)  # what links of a model named "blobs" once made
    (where / "inner" / "w.bin").symlink_to("../../x")
    run = fetch(store, server, [item], mode=mode)
    assert run.code == 0, run.lines
    assert any(line.startswith(f"DAMAGED {item['sha256']}") for line in run.lines)
    if mode == "fetch":
        assert where.is_file() and where.read_bytes() == payload(5000)
    else:
        assert not where.exists()
        assert fetch(store, server, [item]).code == 0 and where.is_file()
