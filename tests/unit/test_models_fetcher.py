"""fetcher.py run as a host runs it (python3 fetcher.py JOB.json, a subprocess) against
tests/fakes/model_server.py on loopback: what lands in the store (content, modes, group, record),
what the server was asked (its request log), the lines printed and the exit status."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FETCHER = ROOT / "ai_deploy" / "host" / "release" / "model_fetcher.py"
SERVER = ROOT / "tests" / "fakes" / "model_server.py"
GROUP = grp.getgrgid(os.getgid()).gr_name
TOKEN = "ya29.test-token-never-printed"
# The interpreter for fetcher.py and the server: a host's python3 may be as old as 3.8.
HOST_PYTHON = os.environ.get("AI_DEPLOY_TEST_HOST_PYTHON", sys.executable)


class ModelServer:
    """model_server.py in a subprocess on 127.0.0.1, port 0, serving ROOT."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.process = subprocess.Popen(
            [HOST_PYTHON, str(SERVER), "--root", str(root), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("listening "), line
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def put(self, rel: str, data: bytes, *, claim: bytes | None = None) -> dict[str, Any]:
        """Serves DATA at REL; the job entry whose sha256 and size are those of CLAIM (or DATA)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        claim = data if claim is None else claim
        url = f"gs://{rel[len('gcs/') :]}" if rel.startswith("gcs/") else f"{self.base}/{rel}"
        name = f"demo/1/{Path(rel).name}"
        return {"sha256": sha(claim), "size": len(claim), "url": url, "path": name}

    def control(self, **options: Any) -> None:
        (self.root / ".control.json").write_text(json.dumps(options))

    def requests(self) -> list[dict[str, Any]]:
        log = self.root / ".requests.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@dataclass
class Run:
    code: int
    lines: list[str]
    stderr: str

    def starting(self, word: str) -> list[list[str]]:
        return [line.split(" ") for line in self.lines if line.startswith(word + " ")]

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.lines[-1].removeprefix("RESULT "))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ModelServer]:
    started = ModelServer(tmp_path / "srv")
    yield started
    started.stop()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def fetch(store: Path, server: ModelServer, files: list[dict[str, Any]], /, **job: Any) -> Run:
    settings = {"store": str(store), "group": GROUP, "files": files, "allow_http": True}
    settings.update(blobs=str(store / "blobs"), partial=str(store / ".partial"))
    settings.update(metadata_host=f"127.0.0.1:{server.port}", gcs_base=server.base)
    settings.update(backoff_s=0.01, timeout_s=10, retries=3)
    job_path = store.parent / "job.json"
    job_path.write_text(json.dumps({**settings, **job}))
    done = subprocess.run(
        [HOST_PYTHON, str(FETCHER), str(job_path)], capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert lines and lines[-1].startswith("RESULT "), done.stdout + done.stderr
    return Run(done.returncode, lines, done.stderr)


def blob(store: Path, item: dict[str, Any]) -> Path:
    return store / "blobs" / item["sha256"]


def part(store: Path, item: dict[str, Any]) -> Path:
    return store / ".partial" / (item["sha256"] + ".part")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_fetch_stores_the_blob_then_its_record(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(300_000))
    run = fetch(store, server, [item])
    assert run.code == 0, run.lines
    assert run.starting("MISSING") == [["MISSING", item["sha256"], "demo/1/weights.bin"]]
    done = run.starting("DONE")[0]
    assert done[:4] == ["DONE", item["sha256"], "demo/1/weights.bin", "300000"]
    assert blob(store, item).read_bytes() == payload(300_000)
    assert mode(blob(store, item)) == 0o640 and blob(store, item).stat().st_gid == os.getgid()
    record = Path(str(blob(store, item)) + ".verified")
    assert mode(record) == 0o640 and record.stat().st_gid == os.getgid()
    assert json.loads(record.read_text())["sha256"] == item["sha256"]
    assert json.loads(record.read_text())["size"] == 300_000
    assert mode(store / "blobs") == 0o750 and mode(store / ".partial") == 0o700
    assert not part(store, item).exists()
    assert run.result == {
        "exit": 0,
        "files": [{**run.result["files"][0], "sha256": item["sha256"], "state": "fetched"}],
    }
    assert [r["range"] for r in server.requests()] == [None]


def test_a_second_run_finds_it_present_and_asks_nothing(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(50_000))
    assert fetch(store, server, [item]).code == 0
    asked = len(server.requests())
    run = fetch(store, server, [item])
    assert run.code == 0
    assert run.lines[:-1] == [f"PRESENT {item['sha256']} demo/1/weights.bin"]
    assert len(server.requests()) == asked


def test_a_cut_download_resumes_in_the_next_run(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(200_000))
    server.control(cut_after_bytes=70_000)
    run = fetch(store, server, [item], retries=0)
    assert run.code == 5
    assert run.lines[-2].startswith("ERROR demo/1/weights.bin: connection closed at byte 70000")
    assert part(store, item).stat().st_size == 70_000 and mode(part(store, item)) == 0o600
    assert not blob(store, item).exists()
    server.control()
    run = fetch(store, server, [item])
    assert run.code == 0, run.lines
    assert server.requests()[-1]["range"] == "bytes=70000-"
    assert server.requests()[-1]["status"] == 206 and server.requests()[-1]["bytes"] == 130_000
    assert sha(blob(store, item).read_bytes()) == item["sha256"]
    assert not part(store, item).exists()


def test_cuts_within_one_run_resume_each_time(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(100_000))
    server.control(cut_after_bytes=30_000)
    run = fetch(store, server, [item], retries=1)  # a cut after progress counts as a first failure
    assert run.code == 0, run.lines
    assert [r["range"] for r in server.requests()] == [
        None,
        "bytes=30000-",
        "bytes=60000-",
        "bytes=90000-",
    ]
    assert sha(blob(store, item).read_bytes()) == item["sha256"]


def test_a_server_ignoring_range_restarts_from_zero(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(100_000))
    (store / ".partial").mkdir(parents=True)
    part(store, item).write_bytes(b"\0" * 40_000)  # bytes that would spoil an append
    server.control(ignore_range=True)
    run = fetch(store, server, [item])
    assert run.code == 0, run.lines
    assert [(r["range"], r["status"]) for r in server.requests()] == [("bytes=40000-", 200)]
    assert blob(store, item).read_bytes() == payload(100_000)


def test_wrong_content_is_a_mismatch_and_leaves_nothing(server: ModelServer, store: Path) -> None:
    served = payload(10_000, seed=2)
    item = server.put("weights.bin", served, claim=payload(10_000))
    run = fetch(store, server, [item])
    assert run.code == 4
    expected = f"MISMATCH demo/1/weights.bin expected={item['sha256']} got={sha(served)}"
    assert run.lines[-2] == expected
    assert not part(store, item).exists()
    assert list((store / "blobs").iterdir()) == []
    assert run.result["files"][0]["state"] == "failed"


def test_more_bytes_than_the_size_is_a_mismatch(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(5_000), claim=payload(4_000))
    run = fetch(store, server, [item])
    assert run.code == 4
    assert run.lines[-2].endswith("got=more-than-4000-bytes")
    assert not part(store, item).exists() and list((store / "blobs").iterdir()) == []


def test_an_endless_body_is_not_read_to_its_end(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(32 << 20), claim=payload(4_000))
    run = fetch(store, server, [item])
    assert run.code == 4 and run.lines[-2].endswith("got=more-than-4000-bytes")
    deadline = time.monotonic() + 10
    while not server.requests() and time.monotonic() < deadline:
        time.sleep(0.05)  # the server logs once its writes fail
    assert server.requests()[0]["bytes"] < 32 << 20


def test_a_complete_partial_is_verified_without_asking(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(20_000))
    (store / ".partial").mkdir(parents=True)
    part(store, item).write_bytes(payload(20_000))
    run = fetch(store, server, [item])
    assert run.code == 0 and run.starting("DONE")
    assert server.requests() == []


def test_nothing_past_the_partial_416_means_verify_it(server: ModelServer, store: Path) -> None:
    served = payload(8_000)
    item = server.put("weights.bin", served, claim=served + b"more")  # the server's is shorter
    (store / ".partial").mkdir(parents=True)
    part(store, item).write_bytes(served)
    run = fetch(store, server, [item])
    assert [(r["range"], r["status"]) for r in server.requests()] == [("bytes=8000-", 416)]
    assert run.code == 4 and run.lines[-2].endswith(f"got={sha(served)} (8000 of 8004 bytes)")
    assert not part(store, item).exists()


def test_an_empty_file_needs_no_request(server: ModelServer, store: Path) -> None:
    item = server.put("empty.bin", b"")
    run = fetch(store, server, [item])
    assert run.code == 0 and blob(store, item).read_bytes() == b""
    assert server.requests() == []


@pytest.mark.parametrize("status", [503, 429])
def test_busy_answers_are_retried(server: ModelServer, store: Path, status: int) -> None:
    item = server.put("weights.bin", payload(10_000))
    server.control(fail_next=2, fail_status=status)
    run = fetch(store, server, [item])
    assert run.code == 0, run.lines
    assert [r["status"] for r in server.requests()] == [status, status, 200]


def test_retries_run_out(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(10_000))
    server.control(fail_next=10)
    run = fetch(store, server, [item], retries=2)
    assert run.code == 5
    assert run.lines[-2] == (
        "ERROR demo/1/weights.bin: HTTP 503 Service Unavailable (after 2 retries)"
    )
    assert len(server.requests()) == 3 and not blob(store, item).exists()


def test_a_missing_file_is_not_retried(server: ModelServer, store: Path) -> None:
    item = {**server.put("weights.bin", b"x"), "url": f"{server.base}/nothing.bin"}
    run = fetch(store, server, [item])
    assert run.code == 5 and run.lines[-2] == "ERROR demo/1/weights.bin: HTTP 404 Not Found"
    assert len(server.requests()) == 1


def test_not_enough_space_stops_before_any_request(server: ModelServer, store: Path) -> None:
    items = [server.put("a.bin", payload(30_000)), server.put("gcs/bkt/b.bin", payload(9_000, 2))]
    (store / ".partial").mkdir(parents=True)
    part(store, items[0]).write_bytes(payload(30_000)[:10_000])
    reserve = 1 << 60
    run = fetch(store, server, items, reserve_bytes=reserve)
    assert run.code == 3
    words = run.lines[-2].split(" ")
    assert words[0] == "NOSPACE" and words[1] == f"need={reserve + 20_000 + 9_000}"
    assert words[2].startswith("free=") and words[3] == f"path={store}"
    assert server.requests() == []  # not even the metadata server for the gs:// one
    assert not blob(store, items[0]).exists()


def test_gs_through_the_metadata_servers_token(server: ModelServer, store: Path) -> None:
    (server.root / ".token").write_text(TOKEN)
    item = server.put("gcs/models-bkt/demo/v1/weights.bin", payload(40_000))
    run = fetch(store, server, [item])
    assert run.code == 0, run.lines
    assert [r["path"] for r in server.requests()] == [
        "/computeMetadata/v1/instance/service-accounts/default/token",
        "/storage/v1/b/models-bkt/o/demo%2Fv1%2Fweights.bin?alt=media",
    ]
    assert server.requests()[1]["auth"] and not server.requests()[0]["auth"]
    assert sha(blob(store, item).read_bytes()) == item["sha256"]
    assert TOKEN not in "\n".join(run.lines) + run.stderr


def test_gs_with_the_jobs_token_skips_the_metadata_server(server: ModelServer, store: Path) -> None:
    (server.root / ".token").write_text(TOKEN)
    items = [server.put("gcs/bkt/a.bin", payload(1_000)), server.put("gcs/bkt/b", payload(9))]
    run = fetch(store, server, items, token=TOKEN)
    assert run.code == 0, run.lines
    assert [r["path"].split("/")[1] for r in server.requests()] == ["storage", "storage"]


def test_gs_with_a_refused_token_fails_without_printing_it(
    server: ModelServer, store: Path
) -> None:
    (server.root / ".token").write_text(TOKEN)
    item = server.put("gcs/bkt/weights.bin", payload(1_000))
    run = fetch(store, server, [item], token="wrong-" + TOKEN)
    assert run.code == 5
    assert run.lines[-2] == (
        "ERROR demo/1/weights.bin: HTTP 401 Unauthorized (the token was refused)"
    )
    assert [r["status"] for r in server.requests()] == [401]  # a job's token is not renewed
    assert TOKEN not in "\n".join(run.lines) + run.stderr


def test_a_refused_metadata_token_is_renewed_once(server: ModelServer, store: Path) -> None:
    (server.root / ".token").write_text(TOKEN)
    item = server.put("gcs/bkt/weights.bin", payload(1_000))
    server.control(stale_token_next=1)
    assert fetch(store, server, [item]).code == 0
    assert [r["status"] for r in server.requests()] == [200, 401, 200, 200]
    blob(store, item).unlink()
    server.control(stale_token_next=5)
    (server.root / ".requests.log").unlink()
    run = fetch(store, server, [item])
    assert run.code == 5 and "HTTP 401" in run.lines[-2]
    assert [r["status"] for r in server.requests()] == [200, 401, 200, 401]


def test_a_redirect_is_followed_with_its_range(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(50_000))
    (store / ".partial").mkdir(parents=True)
    part(store, item).write_bytes(payload(50_000)[:20_000])
    server.control(redirect_to=f"{server.base}/weights.bin")
    item = {**item, "url": f"{server.base}/old/weights.bin"}
    run = fetch(store, server, [item])
    assert run.code == 0, run.lines
    assert [(r["path"], r["range"], r["status"]) for r in server.requests()] == [
        ("/old/weights.bin", "bytes=20000-", 302),
        ("/weights.bin", "bytes=20000-", 206),
    ]


def test_storage_redirects_are_not_followed_so_the_token_stays(
    server: ModelServer, store: Path
) -> None:
    (server.root / ".token").write_text(TOKEN)
    item = server.put("gcs/bkt/weights.bin", payload(1_000))
    server.put("elsewhere.bin", payload(1_000))
    server.control(redirect_to=f"{server.base}/elsewhere.bin")
    run = fetch(store, server, [item], token=TOKEN)
    assert (
        run.code == 5 and run.lines[-2] == "ERROR demo/1/weights.bin: HTTP 302 Found (not followed)"
    )
    assert [r["path"] for r in server.requests()] == ["/storage/v1/b/bkt/o/weights.bin?alt=media"]


def test_verify_drops_a_damaged_blob_for_the_next_fetch(server: ModelServer, store: Path) -> None:
    good, bad = server.put("good.bin", payload(5_000)), server.put("bad.bin", payload(6_000, 3))
    assert fetch(store, server, [good, bad]).code == 0
    with blob(store, bad).open("r+b") as f:
        f.write(b"X")  # same size, other content
    asked = len(server.requests())
    run = fetch(store, server, [good, bad], mode="verify")
    assert run.code == 0
    assert run.lines[:2] == [
        f"VERIFIED {good['sha256']} demo/1/good.bin",
        f"DAMAGED {bad['sha256']} demo/1/bad.bin got={sha(b'X' + payload(6_000, 3)[1:])}",
    ]
    assert not blob(store, bad).exists() and not Path(f"{blob(store, bad)}.verified").exists()
    assert len(server.requests()) == asked
    run = fetch(store, server, [good, bad])
    assert [line.split(" ")[0] for line in run.lines] == ["PRESENT", "MISSING", "DONE", "RESULT"]
    assert blob(store, bad).read_bytes() == payload(6_000, 3)


def test_a_blob_without_its_record_is_hashed_not_fetched(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(7_000))
    (store / "blobs").mkdir(parents=True)
    blob(store, item).write_bytes(payload(7_000))  # a run that stopped before the record
    run = fetch(store, server, [item])
    assert run.lines[:-1] == [f"VERIFIED {item['sha256']} demo/1/weights.bin"]
    assert Path(f"{blob(store, item)}.verified").exists() and server.requests() == []
    assert fetch(store, server, [item]).lines[0].startswith("PRESENT ")


def test_a_blob_replaced_after_its_record_is_not_trusted(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(7_000))
    assert fetch(store, server, [item]).code == 0
    replacement = store / "other"
    replacement.write_bytes(payload(7_000, 9))
    os.replace(replacement, blob(store, item))  # same size, a new file: the record is not its
    run = fetch(store, server, [item])
    assert [line.split(" ")[0] for line in run.lines] == ["DAMAGED", "DONE", "RESULT"]
    assert blob(store, item).read_bytes() == payload(7_000)


def test_a_linked_blob_is_not_trusted_or_followed(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(7_000))
    elsewhere = store.parent / "elsewhere.bin"
    elsewhere.write_bytes(payload(7_000))
    (store / "blobs").mkdir(parents=True)
    blob(store, item).symlink_to(elsewhere)
    run = fetch(store, server, [item])
    assert run.lines[0] == f"DAMAGED {item['sha256']} demo/1/weights.bin got=not-a-file"
    assert not blob(store, item).is_symlink() and elsewhere.read_bytes() == payload(7_000)
    assert run.code == 0 and blob(store, item).read_bytes() == payload(7_000)


def test_progress_lines_say_bytes_total_rate_and_eta(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(3 * (1 << 20) + 5))
    run = fetch(store, server, [item], progress_every_s=0)
    progress = run.starting("PROGRESS")
    assert len(progress) >= 3, run.lines
    assert all(p[1:3] == [item["sha256"], "demo/1/weights.bin"] for p in progress)
    assert all(p[4] == str(item["size"]) and int(p[5]) > 0 and int(p[6]) >= 0 for p in progress)
    done = [int(p[3]) for p in progress]
    assert done == sorted(done) and done[-1] == item["size"]
    assert not fetch(store, server, [item]).starting("PROGRESS")


def test_one_content_listed_twice_is_fetched_once(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", payload(1_000))
    run = fetch(store, server, [item, {**item, "path": "other/1/weights.bin"}])
    assert run.code == 0 and len(run.starting("DONE")) == 1 and len(server.requests()) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"sha256": "../../etc/passwd"}, "each file needs sha256 (64 hex)"),
        ({"sha256": "A" * 64}, "each file needs sha256 (64 hex)"),
        ({"size": -1}, "each file needs"),
        ({"size": True}, "each file needs"),
        ({"path": "a\nDONE x"}, "each file needs"),
        ({"url": "file:///etc/shadow"}, "each file needs"),
    ],
)
def test_a_bad_job_file_is_refused(
    server: ModelServer, store: Path, change: dict[str, Any], expected: str
) -> None:
    item = {**server.put("weights.bin", b"x"), **change}
    run = fetch(store, server, [item])
    assert run.code == 2 and run.lines[-2].startswith("ERROR job: ") and expected in run.lines[-2]
    assert not store.exists()


def test_job_keys_are_checked(server: ModelServer, store: Path) -> None:
    item = server.put("weights.bin", b"x")
    run = fetch(store, server, [item], retrys=3)
    assert run.code == 2 and "unknown keys ['retrys']" in run.lines[-2]
    run = fetch(store, server, [item], allow_http=False)
    assert run.code == 2 and "(gs://, https://)" in run.lines[-2]
    run = fetch(store, server, [item], store="relative/store")
    assert run.code == 2 and "not an absolute path: store" in run.lines[-2]
    run = fetch(store, server, [item], blobs="blobs", partial="")
    assert run.code == 2 and "not an absolute path: blobs, partial" in run.lines[-2]
    run = fetch(store, server, [item], allow_http="yes")  # only true allows http://
    assert run.code == 2 and "(gs://, https://)" in run.lines[-2]
    run = fetch(store, server, [item], token=12345)
    assert run.code == 2 and "token must be a string or null" in run.lines[-2]
    run = fetch(store, server, [item], retries=-1)
    assert run.code == 2 and "must be a number >= 0" in run.lines[-2]
    run = fetch(store, server, [item], mode="repair")
    assert run.code == 2 and 'mode must be "fetch" or "verify"' in run.lines[-2]
    run = fetch(store, server, [item], group="no-such-group-here")
    assert run.code == 2 and "no group 'no-such-group-here'" in run.lines[-2]
    assert server.requests() == []
    assert fetch(store, server, [item], run="a1b2c3d4").code == 0  # a caller's label, accepted
