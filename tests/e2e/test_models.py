"""Model files end to end on a sandbox host: a file server (tests/fakes/model_server.py) runs
inside the host's own network namespace, on its loopback, and the host fetches from it. A
release with a 300 MB model: fetched, verified, linked, read by the app, mode and owner right;
another release with the same model fetches nothing; a corrupted source fails naming the file
with the partial gone and the old release serving; a server that stops mid-file and a deploy
killed mid-fetch both resume from the partial; too little disk is refused before any byte;
prune drops what no kept release uses."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_deploy.artifact.build import build_artifact, release_id_from_artifact
from ai_deploy.inventory import pyinfra_command
from ai_deploy.project import group_data_defaults
from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, boot
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    assert_failed,
    assert_ok,
    copy_example,
    grand_total,
    main_pid,
    run_deploy,
    serving_release,
    start_deploy,
)

pytestmark = pytest.mark.e2e

SERVER = REPO / "tests" / "fakes" / "model_server.py"
ROOT = "/srv/models"
PORT = 8765
STORE = f"{APP_ROOT}/models"
BIG = 300 * 2**20
DATA = ("models_allow_http=true", "models_fetch_retries=2")


@dataclass
class Served:
    path: str  # under ROOT
    sha256: str
    size: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{PORT}/{self.path}"


class ModelHost:
    def __init__(self, sandbox: Sandbox, work: Path) -> None:
        self.sandbox, self.work = sandbox, work

    def sh(self, script: str, check: bool = True) -> str:
        return self.sandbox.sudo(script, check=check)

    def start_server(self) -> None:
        self.sh(
            f"mkdir -p {ROOT}; cd /; setsid python3 /opt/model_server.py --root {ROOT} "
            f"--port {PORT} --bind 127.0.0.1 >/srv/server.out 2>&1 </dev/null &"
        )
        deadline = time.monotonic() + 30
        while "listening" not in self.sh("cat /srv/server.out 2>/dev/null || true"):
            assert time.monotonic() < deadline, "the model server did not start"
            time.sleep(0.2)

    def server_running(self) -> bool:
        return self.sh(f"ss -ltn | grep -q ':{PORT} ' && echo up || echo down").strip() == "up"

    def control(self, **options: object) -> None:
        text = json.dumps(options)
        self.sh(f"printf '%s' {shlex.quote(text)} > {ROOT}/.control.json")

    def make_file(self, path: str, mib: int) -> Served:
        out = self.sh(
            f"mkdir -p $(dirname {ROOT}/{path}) && head -c {mib}M /dev/urandom > {ROOT}/{path} "
            f"&& sha256sum {ROOT}/{path} && stat -c %s {ROOT}/{path}"
        ).split()
        return Served(path, out[0], int(out[-1]))

    def requests(self, path: str) -> list[dict[str, object]]:
        log = self.sh(f"cat {ROOT}/.requests.log 2>/dev/null || true").splitlines()
        return [e for e in map(json.loads, log) if str(e["path"]).lstrip("/") == path]

    def partials(self) -> list[str]:
        return self.sh(f"ls -1 {STORE}/.partial 2>/dev/null | grep -v '^\\.' || true").split()

    def release(
        self,
        label: str,
        model_version: str,
        *files: tuple[str, Served, str],
        full: bool = False,
        fails: bool = False,
    ) -> Artifact:
        """The example app reading models/demo-model/<first file> at start, with a models.toml
        naming FILES as (path in the model, served file, sha256 written in the manifest);
        FAILS: the app exits once it has read its model (its health gate fails)."""
        src = copy_example(self.work / label)
        main = src / "main.py"
        first = files[0][0]
        text = (
            main.read_text()
            .replace(
                'REVISION_FILE = Path(__file__).resolve().parent / "REVISION"\n',
                'REVISION_FILE = Path(__file__).resolve().parent / "REVISION"\n'
                f'_MODEL = Path(__file__).resolve().parent / "models" / "demo-model" / {first!r}\n'
                "with _MODEL.open('rb') as _f:\n"
                "    MODEL_FILE = {'bytes': _MODEL.stat().st_size,\n"
                "                  'head': hashlib.sha256(_f.read(1 << 20)).hexdigest()}\n",
            )
            .replace(
                '@app.get("/health")\n',
                '@app.get("/model-file")\nasync def model_file() -> dict[str, object]:\n'
                '    return MODEL_FILE\n\n\n@app.get("/health")\n',
            )
        )
        assert "MODEL_FILE" in text and "/model-file" in text, "main.py changed: adapt the patch"
        if full:  # the whole file is checked as it loads: a damaged one fails the start
            text = text.replace(
                "with _MODEL.open('rb') as _f:\n",
                f"if hashlib.sha256(_MODEL.read_bytes()).hexdigest() != {files[0][2]!r}:\n"
                "    raise SystemExit('the model file is damaged')\n"
                "with _MODEL.open('rb') as _f:\n",
            )
        if fails:
            failing = "\nraise SystemExit('a release that fails')\n\n\n@app.get("
            text = text.replace("\n\n\n@app.get(", failing, 1)
            assert failing in text, "main.py changed: adapt the patch"
        main.write_text(f"{text}\n# {label}\n")
        entries = "".join(
            f'  [[models.files]]\n  path = "{p}"\n  url = "{s.url}"\n  sha256 = "{sha}"\n'
            f"  size = {s.size}\n"
            for p, s, sha in files
        )
        (src / "models.toml").write_text(
            f'[[models]]\nname = "demo-model"\nversion = "{model_version}"\n{entries}'
        )
        path = build_artifact(src, self.work / f"dist-{label}")
        return Artifact(path, release_id_from_artifact(path))

    def deploy(self, artifact: Artifact, *extra: str) -> str:
        return run_deploy(self.sandbox.inventory, artifact.data, *DATA, *extra).stdout

    def model_file(self) -> dict[str, object]:
        import requests

        return requests.get(f"http://{self.sandbox.address}:8000/model-file", timeout=5).json()


@contextmanager
def model_host(label: str, work: Path) -> Iterator[ModelHost]:
    """A fresh sandbox host (named after LABEL) with the file server running inside it."""
    started, inventory = boot(label)
    sandbox = Sandbox(started[0], inventory)
    try:
        sandbox.put(SERVER, "/tmp/model_server.py")
        sandbox.sudo("install -m 0755 /tmp/model_server.py /opt/model_server.py")
        host = ModelHost(sandbox, work)
        host.start_server()
        yield host
    finally:
        hosts.down([h.name for h in started])


@pytest.fixture(scope="module")
def mh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelHost]:
    with model_host("models", tmp_path_factory.mktemp("models")) as host:
        yield host


@pytest.fixture(scope="module")
def weights(mh: ModelHost) -> Served:
    return mh.make_file("demo/weights.bin", BIG // 2**20)


def flip_a_byte(mh: ModelHost, path: str, *, keep_mtime: bool) -> None:
    """Byte 100 of PATH inverted in place (same size and inode); KEEP_MTIME: its modification
    time put back to the nanosecond, as silent damage leaves it."""
    damage = (
        "import os, sys; p = sys.argv[1]; st = os.stat(p)\n"
        "with open(p, 'r+b') as f:\n    f.seek(100); b = f.read(1); f.seek(100)\n"
        "    f.write(bytes([b[0] ^ 0xFF]))\n"
        + ("os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))\n" if keep_mtime else "")
    )
    mh.sh(f"python3 -c {shlex.quote(damage)} {path}")


def test_1_a_model_is_fetched_verified_linked_and_read(mh: ModelHost, weights: Served) -> None:
    first = mh.release("m-first", "v1", ("weights.bin", weights, weights.sha256))
    out = assert_ok(run_deploy(mh.sandbox.inventory, first.data, *DATA))
    assert f"models: DONE {weights.sha256} demo-model/v1/weights.bin {BIG}" in out
    assert serving_release(mh.sandbox.address) == first.release_id
    # The app opened it through the release's link.
    expected_head = mh.sh(f"head -c 1048576 {ROOT}/demo/weights.bin | sha256sum").split()[0]
    assert mh.model_file() == {"bytes": BIG, "head": expected_head}
    blob = f"{STORE}/blobs/{weights.sha256}"
    assert mh.sh(f"stat -c '%a %U %G %s' {blob}").split() == ["640", "root", "ai-server", str(BIG)]
    assert mh.sh(f"stat -c '%a %U %G' {STORE} {STORE}/blobs").split() == [
        "750", "root", "ai-server", "750", "root", "ai-server",
    ]  # fmt: skip
    assert mh.sh(f"test -f {blob}.verified && echo yes").strip() == "yes"
    tree = f"{APP_ROOT}/releases/{first.release_id}/models/demo-model"
    assert mh.sh(f"stat -c '%F %a %U %G' {tree}").strip() == "directory 750 root ai-server"
    link = mh.sh(f"readlink {tree}/weights.bin").strip()
    assert link == f"../../../../models/blobs/{weights.sha256}"  # the release's own link
    assert mh.sh(f"readlink -f {APP_ROOT}/current/models/demo-model/weights.bin").strip() == blob
    # Not world-readable: a user outside the service's group cannot read it.
    probe = f"su -s /bin/sh nobody -c 'head -c1 {blob}' >/dev/null 2>&1 && echo read || echo no"
    assert mh.sh(probe).strip() == "no"
    assert mh.partials() == []
    assert len(mh.requests("demo/weights.bin")) == 1
    # The same deploy again: nothing changes, nothing restarts, nothing is fetched or hashed.
    pid = main_pid(mh.sandbox)
    again = assert_ok(run_deploy(mh.sandbox.inventory, first.data, *DATA))
    totals = grand_total(again)
    assert (totals.success, totals.error) == (0, 0), again[-2000:]
    assert "models:" not in again
    assert main_pid(mh.sandbox) == pid
    assert len(mh.requests("demo/weights.bin")) == 1


def test_2_another_release_with_the_same_model_fetches_nothing(
    mh: ModelHost, weights: Served
) -> None:
    before = len(mh.requests("demo/weights.bin"))
    second = mh.release("m-second", "v1", ("weights.bin", weights, weights.sha256))
    out = assert_ok(run_deploy(mh.sandbox.inventory, second.data, *DATA))
    assert f"models: PRESENT {weights.sha256}" in out
    assert "models: DONE" not in out
    assert len(mh.requests("demo/weights.bin")) == before  # not one request
    assert serving_release(mh.sandbox.address) == second.release_id
    assert mh.model_file()["bytes"] == BIG


def test_3_a_corrupted_source_fails_naming_the_file_and_the_old_release_serves(
    mh: ModelHost, weights: Served
) -> None:
    serving = serving_release(mh.sandbox.address)
    other = mh.make_file("demo/other.bin", 40)
    wanted = "f" * 64  # the manifest's hash; the server sends other bytes under the URL
    bad = mh.release("m-corrupt", "v2", ("weights.bin", other, wanted))
    out = assert_failed(run_deploy(mh.sandbox.inventory, bad.data, *DATA))
    assert f"MISMATCH demo-model/v2/weights.bin expected={wanted} got={other.sha256}" in out
    assert mh.partials() == []
    assert mh.sh(f"ls {STORE}/blobs/{wanted}* 2>/dev/null || true").strip() == ""
    assert serving_release(mh.sandbox.address) == serving
    assert (
        mh.sh(f"test -e {APP_ROOT}/releases/{bad.release_id} && echo yes || echo no").strip()
        == "no"
    )


def test_4_a_server_stopping_mid_file_is_resumed_from_the_partial(mh: ModelHost) -> None:
    served = mh.make_file("demo/v3.bin", 200)
    cut = 64 * 2**20
    release = mh.release("m-resume", "v3", ("weights.bin", served, served.sha256))
    mh.control(cut_after_bytes=cut, stop_after_cut=True)
    try:
        out = assert_failed(run_deploy(mh.sandbox.inventory, release.data, *DATA))
    finally:
        mh.control()
    assert "ERROR demo-model/v3/weights.bin" in out
    assert not mh.server_running()
    size = int(mh.sh(f"stat -c %s {STORE}/.partial/{served.sha256}.part"))
    assert size == cut
    mh.start_server()
    out = assert_ok(run_deploy(mh.sandbox.inventory, release.data, *DATA))
    ranges = [e["range"] for e in mh.requests("demo/v3.bin")]
    assert ranges[0] is None and f"bytes={cut}-" in ranges, ranges
    assert f"models: DONE {served.sha256}" in out
    assert mh.partials() == []
    assert mh.model_file()["bytes"] == served.size


def test_5_a_deploy_killed_mid_fetch_is_resumed_by_the_next(mh: ModelHost) -> None:
    served = mh.make_file("demo/v4.bin", 200)
    cut = 48 * 2**20
    release = mh.release("m-killed", "v4", ("weights.bin", served, served.sha256))
    part = f"{STORE}/.partial/{served.sha256}.part"
    slow = ("models_allow_http=true", "models_fetch_retries=50")
    mh.control(cut_after_bytes=cut, stop_after_cut=True)
    killed = start_deploy(mh.sandbox.inventory, release.data, *slow)
    deadline = time.monotonic() + 120
    while mh.sh(f"stat -c %s {part} 2>/dev/null || echo 0").strip() != str(cut):
        assert time.monotonic() < deadline, killed.output[-3000:]
        time.sleep(0.5)
    killed.kill()  # the deploy dies while its fetch waits to retry (the server is down)
    # The server comes back answering 503, so the fetch the dead deploy left cannot finish;
    # the next deploy ends it by its PID and resumes the partial once the server serves again.
    mh.control(fail_next=100000)
    mh.start_server()
    again = start_deploy(mh.sandbox.inventory, release.data, *slow)
    try:
        again.wait_for("stopped the fetch a stopped deploy left", timeout=300)
        assert mh.sh(f"stat -c %s {part}").strip() == str(cut)
        mh.control()
        assert again.wait() == 0, again.output[-4000:]
    finally:
        mh.control()
        if again.proc.poll() is None:
            again.kill()
    ranges = [e["range"] for e in mh.requests("demo/v4.bin") if e["status"] == 206]
    assert ranges == [f"bytes={cut}-"], ranges
    assert f"models: DONE {served.sha256}" in again.output
    assert mh.partials() == []
    assert mh.model_file()["bytes"] == served.size


def test_6_not_enough_disk_is_refused_before_fetching(mh: ModelHost) -> None:
    serving = serving_release(mh.sandbox.address)
    served = mh.make_file("demo/v5.bin", 8)
    release = mh.release("m-nospace", "v5", ("weights.bin", served, served.sha256))
    huge = "models_space_reserve_bytes=1000000000000000"
    out = assert_failed(run_deploy(mh.sandbox.inventory, release.data, *DATA, huge))
    assert "not enough disk for the model files" in out and "NOSPACE need=" in out
    assert "free=" in out
    assert mh.requests("demo/v5.bin") == []
    assert serving_release(mh.sandbox.address) == serving


def test_7_prune_drops_what_no_kept_release_uses(mh: ModelHost, weights: Served) -> None:
    keep = int(group_data_defaults()["releases_keep"])
    served = mh.make_file("demo/v6.bin", 4)
    last = None
    for i in range(keep + 1):
        last = mh.release(f"m-prune-{i}", "v6", ("weights.bin", served, served.sha256))
        assert_ok(run_deploy(mh.sandbox.inventory, last.data, *DATA))
    assert last is not None
    blobs = mh.sh(f"ls -1 {STORE}/blobs").split()
    assert served.sha256 in blobs and f"{served.sha256}.verified" in blobs
    assert weights.sha256 not in blobs  # only the first releases used it: all pruned
    assert [b for b in blobs if not b.startswith(served.sha256)] == []
    assert mh.sh(f"ls -1 {STORE}").split() == ["blobs"]  # no name/version layer
    assert mh.model_file()["bytes"] == served.size


def test_8_gs_urls_through_the_metadata_servers_token(mh: ModelHost) -> None:
    """gs:// with the JSON API's media download and the VM's token from the metadata server,
    both played by the server on the host's loopback (models_gcs_url, models_metadata_host)."""
    mh.sh(f"printf '%s' token-for-the-vm > {ROOT}/.token")
    served = mh.make_file("gcs/model-bucket/demo/gs.bin", 16)
    gs = Served(served.path, served.sha256, served.size)
    release = mh.release("m-gs", "v7", ("weights.bin", gs, gs.sha256))
    text = (mh.work / "m-gs" / "models.toml").read_text()
    assert served.url in text
    # The manifest names the object by its gs:// URL (rebuilt with it).
    (mh.work / "m-gs" / "models.toml").write_text(
        text.replace(served.url, "gs://model-bucket/demo/gs.bin")
    )
    path = build_artifact(mh.work / "m-gs", mh.work / "dist-m-gs-2")
    release = Artifact(path, release_id_from_artifact(path))
    where = (f"models_gcs_url=http://127.0.0.1:{PORT}", f"models_metadata_host=127.0.0.1:{PORT}")
    out = assert_ok(run_deploy(mh.sandbox.inventory, release.data, *DATA, *where))
    assert f"models: DONE {served.sha256} demo-model/v7/weights.bin" in out
    media = mh.requests("storage/v1/b/model-bucket/o/demo%2Fgs.bin?alt=media")
    assert media and all(e["auth"] for e in media), media
    assert "token-for-the-vm" not in out  # the token is never printed
    assert mh.model_file()["bytes"] == served.size


def test_9_a_damaged_file_found_by_a_verify_run_is_fetched_again(mh: ModelHost) -> None:
    current = mh.sh(f"readlink {APP_ROOT}/current").strip().rsplit("/", 1)[-1]
    record = json.loads(mh.sh(f"cat {APP_ROOT}/releases/{current}/.ai-deploy-models.json"))
    sha = record[0]["files"][0]["sha256"]
    blob = f"{STORE}/blobs/{sha}"
    flip_a_byte(mh, blob, keep_mtime=False)
    assert mh.sh(f"sha256sum {blob}").split()[0] != sha
    where = (f"models_gcs_url=http://127.0.0.1:{PORT}", f"models_metadata_host=127.0.0.1:{PORT}")
    art = next(mh.work.glob("dist-m-gs-2/*.tar.gz"))
    again = Artifact(art, release_id_from_artifact(art))
    assert again.release_id == current
    out = assert_ok(
        run_deploy(mh.sandbox.inventory, again.data, *DATA, *where, "models_verify=true")
    )
    assert f"models: DAMAGED {sha}" in out
    assert f"models: DONE {sha}" in out
    assert mh.sh(f"sha256sum {blob}").split()[0] == sha
    assert mh.model_file()["bytes"] > 0


def test_10_the_dry_run_plan_says_what_must_be_fetched(mh: ModelHost) -> None:
    served = mh.make_file("demo/v8.bin", 3)
    release = mh.release("m-dry", "v8", ("weights.bin", served, served.sha256))
    before = mh.sh(f"readlink {APP_ROOT}/current || true").strip()
    data = [release.data, *DATA]
    cmd = pyinfra_command(str(mh.sandbox.inventory), data, dry=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout + done.stderr
    assert f"1 of its 1 model file(s) will be fetched ({served.size} bytes)" in out, out[-3000:]
    assert mh.requests("demo/v8.bin") == []
    assert mh.sh(f"readlink {APP_ROOT}/current || true").strip() == before


def test_11_a_failed_load_drops_a_damaged_file_and_the_next_deploy_fetches_it(
    mh: ModelHost,
) -> None:
    served = mh.make_file("demo/v9.bin", 8)
    first = mh.release("m-load", "v9", ("weights.bin", served, served.sha256))
    assert_ok(run_deploy(mh.sandbox.inventory, first.data, *DATA))
    blob = f"{STORE}/blobs/{served.sha256}"
    # Silent damage: other bytes, the same size and modification time (its record still fits).
    flip_a_byte(mh, blob, keep_mtime=True)
    checking = mh.release("m-load-b", "v9", ("weights.bin", served, served.sha256), full=True)
    out = assert_failed(run_deploy(mh.sandbox.inventory, checking.data, *DATA))
    assert f"models: PRESENT {served.sha256}" in out  # trusted by its record
    assert "hashing its model files again" in out
    assert f"models: DAMAGED {served.sha256}" in out
    assert serving_release(mh.sandbox.address) == first.release_id  # switched back
    out = assert_ok(run_deploy(mh.sandbox.inventory, checking.data, *DATA))
    assert f"models: DONE {served.sha256}" in out
    assert serving_release(mh.sandbox.address) == checking.release_id
