"""End-to-end on one sandbox host (socket strategy): the release's model files are in the page
cache before the old process stops (page_cache_warm), and the deploy says the read's figures.

The file server of tests/e2e/test_models.py runs inside the host. Every release ships the same
64 MiB model file. Each release's main.py, when its process is stopped (the end of its
lifespan, after the stop's SIGTERM and before the next release starts), leaves a mark in its
cache directory and waits for the test: while it waits, the test counts as root on the host,
with mincore(2) (page_cache_tool.py's check mode), how much of the model files `current` now
leads to is in the page cache, then lets the stop go on. Before each deploy the file is evicted
with posix_fadvise(DONTNEED) by a small script run on the host, so only the deploy can have
read it again:

- page_cache_warm=false: the line says skipped, and the file was cold at the old process's stop;
- the default: the line gives the figures (bytes, files, MB/s, already resident), and the whole
  file was resident at the old process's stop; the outage is said and kept in last-start.json;
  a second run reads nothing, restarts nothing."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_deploy.artifact.build import build_artifact, release_id_from_artifact
from ai_deploy.host import page_cache
from tests.e2e.deploykit import (
    APP_ROOT,
    DEPLOY_TIMEOUT_S,
    Artifact,
    assert_ok,
    copy_example,
    grand_total,
    main_pid,
    run_deploy,
    sandbox_with,
    serving_release,
    start_deploy,
)
from tests.e2e.test_models import SERVER, ModelHost, Served

pytestmark = pytest.mark.e2e

SETTINGS = {"models_allow_http": True, "models_fetch_retries": 2}
MIB = 2**20
CACHE = f"{APP_ROOT}/cache/.cache"  # XDG_CACHE_HOME of the service
EVICT = """import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
"""
# Pasted into main.py before its settings, and called at the end of its lifespan: at the stop,
# a mark, then a wait (at most 2 minutes) for the test's go.
AT_STOP = """def _hold_at_stop() -> None:
    import time as _time

    base = Path(os.environ["XDG_CACHE_HOME"])
    base.mkdir(parents=True, exist_ok=True)
    (base / "stopping-{label}").write_text(os.readlink("{app_root}/current"))
    for _ in range(1200):
        if (base / "go-{label}").exists():
            return
        _time.sleep(0.1)
"""
SHUTDOWN = '    _state["ready"] = False\n'  # the last line of main.py's lifespan
TOOL = "/opt/page_cache_tool.py"


@pytest.fixture(scope="module")
def mh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelHost]:
    work = tmp_path_factory.mktemp("p24-warm")
    with sandbox_with("p24-warm", SETTINGS, work) as sandbox:
        sandbox.put(SERVER, "/tmp/model_server.py")
        sandbox.sudo("install -m 0755 /tmp/model_server.py /opt/model_server.py")
        sandbox.put(Path(page_cache.__file__).with_name("page_cache_tool.py"), "/tmp/tool.py")
        sandbox.sudo(f"install -m 0644 /tmp/tool.py {TOOL}")
        host = ModelHost(sandbox, work)
        host.start_server()
        yield host


@pytest.fixture(scope="module")
def weights(mh: ModelHost) -> Served:
    return mh.make_file("demo/weights.bin", 64)


def release(mh: ModelHost, weights: Served, label: str, *, reads_model: bool) -> Artifact:
    """The example app with WEIGHTS as its one model file, held at its stop; READS_MODEL: its
    stand-in engine reads the model files as it starts (ENGINE_MODEL_DIR)."""
    src = copy_example(mh.work / label)
    env = {"ENGINE_MODEL_DIR": f"{APP_ROOT}/current/models/demo-model"} if reads_model else {}
    anchor = "# Settings: environment variables only"
    main = src / "main.py"
    text = main.read_text()
    assert anchor in text, "main.py changed: adapt the patch"
    hook = AT_STOP.format(app_root=APP_ROOT, label=label)
    assert text.count(SHUTDOWN) == 1, "main.py changed: adapt the patch"
    text = text.replace(SHUTDOWN, f"{SHUTDOWN}    _hold_at_stop()\n")
    text = text.replace(anchor, f"{hook}\nos.environ.update({env!r})\n{anchor}", 1)
    main.write_text(f"{text}# {label}\n")
    (src / "models.toml").write_text(
        '[[models]]\nname = "demo-model"\nversion = "1"\n[[models.files]]\n'
        f'path = "weights.bin"\nurl = "{weights.url}"\nsha256 = "{weights.sha256}"\n'
        f"size = {weights.size}\n"
    )
    path = build_artifact(src, mh.work / f"dist-{label}")
    return Artifact(path, release_id_from_artifact(path))


def evict(mh: ModelHost, weights: Served) -> None:
    blob = f"{APP_ROOT}/models/blobs/{weights.sha256}"
    mh.sh(f"python3 -c {shlex.quote(EVICT)} {blob}")


def resident_at_stop(mh: ModelHost, new: Artifact, old: str, *data: str) -> tuple[str, int]:
    """Deploy NEW over the release labelled OLD: (the deploy's output, bytes of the model files
    in the page cache while OLD's process was stopping)."""
    run = start_deploy(mh.sandbox.inventory, new.data, *data)
    try:
        mark = f"{CACHE}/stopping-{old}"
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while not mh.sh(f"cat {mark} 2>/dev/null || true").strip():
            assert run.proc.poll() is None, f"the deploy ended before {old} stopped:\n{run.output}"
            assert time.monotonic() < deadline, f"{old} never stopped:\n{run.output}"
            time.sleep(0.2)
        assert mh.sh(f"cat {mark}").strip() == f"releases/{new.release_id}"
        check = json.dumps({"mode": "check", "margin": 0, "max_s": 0})
        counted = mh.sh(f"python3 {TOOL} {shlex.quote(check)} {APP_ROOT}/current/models").split()
        assert counted[:3] == ["FILES", "1", str(MIB * 64)], counted
        mh.sh(f"touch {CACHE}/go-{old}")
        assert run.wait() == 0, run.output
    finally:
        run.kill()
    assert serving_release(mh.sandbox.address) == new.release_id, run.output
    return run.output, int(counted[3])


def test_model_files_are_resident_before_the_old_process_stops(
    mh: ModelHost, weights: Served
) -> None:
    first = release(mh, weights, "p24-first", reads_model=False)
    assert_ok(run_deploy(mh.sandbox.inventory, first.data))

    # Off: nothing reads the evicted file before the old process stops.
    evict(mh, weights)
    cold = release(mh, weights, "p24-cold", reads_model=True)
    out, resident = resident_at_stop(mh, cold, "p24-first", "page_cache_warm=false")
    assert (
        f"page cache: skipped (page_cache_warm=false): release {cold.release_id}'s model "
        "files load from disk" in out
    ), out
    assert resident < weights.size // 4, out  # cold at the stop

    # On (the default): read while the old release still served, resident at its stop.
    evict(mh, weights)
    warm = release(mh, weights, "p24-warm", reads_model=True)
    out, resident = resident_at_stop(mh, warm, "p24-cold")
    # All of it was read (the line says so); the kernel may reclaim a few pages of it before the
    # stop on a machine whose memory other tests use, never most of it.
    assert resident >= weights.size * 0.9, out
    line = next(x for x in out.splitlines() if "page cache: read" in x)
    size_mb = f"{weights.size / 1e6:.1f} MB"
    assert f"page cache: read {size_mb} of release {warm.release_id}'s model files " in line
    assert f"(1 files, {size_mb}), 0.0 MB already resident, in " in line and " MB/s)" in line
    assert out.index("page cache: read") < out.index("restarting ai-server.service"), out
    # The one-copy outage: said by the gate, recorded on the host (root's, 0644).
    record = json.loads(mh.sh(f"cat {APP_ROOT}/last-start.json"))
    assert sorted(record) == ["at", "outage_s", "release", "start_s", "strategy"], record
    assert (record["release"], record["strategy"]) == (warm.release_id, "socket")
    assert (
        f"outage {record['outage_s']:.1f} s: from stopping the old process to release "
        f"{warm.release_id} passing readiness" in out
    ), out
    assert mh.sh(f"stat -c '%U %a' {APP_ROOT}/last-start.json").strip() == "root 644"

    # The same input again: nothing read, nothing restarted.
    pid = main_pid(mh.sandbox)
    again = assert_ok(run_deploy(mh.sandbox.inventory, warm.data))
    assert grand_total(again).success == 0, again
    assert "page cache:" not in again, again
    assert main_pid(mh.sandbox) == pid
