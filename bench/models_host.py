"""The model-files benchmark's steps on its sandbox host: the test's file server
(tests/fakes/model_server.py) run inside the host on its loopback, a random file under the
server's root, curl's download of it inside the host, the server's request log; and the
releases it deploys (the example app marked per release, with or without a models.toml)."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.artifact.build import build_artifact, release_id_from_artifact
from bench.models_report import parse_curl
from testkit.remote import put, sudo
from testkit.variants import EXAMPLE, Variant, mark

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "tests" / "fakes" / "model_server.py"
ROOT = "/srv/models"  # the server's root, inside the host
PORT = 8765
MODEL = "bench-model"
_HASH = (  # prints "SHA256 SECONDS" for the file argv[1]
    "import hashlib, sys, time\n"
    "h, t = hashlib.sha256(), time.monotonic()\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    for chunk in iter(lambda: f.read(1 << 20), b''):\n"
    "        h.update(chunk)\n"
    "print(h.hexdigest(), time.monotonic() - t)\n"
)


@dataclass(frozen=True)
class Served:
    path: str  # under ROOT
    sha256: str
    size: int
    hash_s: float  # how long hashing it alone took inside the host (see _HASH)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{PORT}/{self.path}"

    def manifest(self, version: str = "v1") -> str:
        """A models.toml naming this file as MODEL's weights.bin."""
        return (
            f'[[models]]\nname = "{MODEL}"\nversion = "{version}"\n'
            f'  [[models.files]]\n  path = "weights.bin"\n  url = "{self.url}"\n'
            f'  sha256 = "{self.sha256}"\n  size = {self.size}\n'
        )


class ModelServerHost:
    def __init__(self, address: str) -> None:
        self.address = address

    def sh(self, script: str, timeout: float = 600.0) -> str:
        return sudo(self.address, script, timeout=timeout)

    def start_server(self) -> None:
        """The file server on the host's 127.0.0.1:PORT (it ends with the host)."""
        put(self.address, SERVER, "/tmp/model_server.py")
        self.sh(
            f"install -m 0755 /tmp/model_server.py /opt/model_server.py && mkdir -p {ROOT} && "
            f"cd / && setsid python3 /opt/model_server.py --root {ROOT} --port {PORT} "
            "--bind 127.0.0.1 >/srv/server.out 2>&1 </dev/null &"
        )
        deadline = time.monotonic() + 30
        while "listening" not in self.sh("cat /srv/server.out 2>/dev/null || true"):
            if time.monotonic() > deadline:
                raise RuntimeError("the model server did not start on the host")
            time.sleep(0.2)

    def make_file(self, path: str, mib: int) -> Served:
        """MIB MiB from /dev/urandom at ROOT/PATH, its size, and its sha256 as the fetcher
        computes it (python3's hashlib, 1 MiB reads), timed."""
        f = shlex.quote(f"{ROOT}/{path}")
        out = self.sh(
            f"mkdir -p $(dirname {f}) && head -c {mib}M /dev/urandom > {f} && sync && "
            f"python3 -c {shlex.quote(_HASH)} {f} && stat -c %s {f}"
        ).split()
        return Served(path, out[0], int(out[2]), float(out[1]))

    def curl(self, served: Served) -> tuple[float, int]:
        """(seconds, bytes) of a plain curl of SERVED to /dev/null inside the host."""
        fmt = shlex.quote("%{time_total} %{size_download}")
        text = self.sh(f"curl -sf -o /dev/null -w {fmt} {shlex.quote(served.url)}")
        return parse_curl(text)

    def disk_write(self, served: Served, directory: str) -> float:
        """Seconds a copy of SERVED (read from the page cache) into DIRECTORY takes with its
        fsync, dd alone: the disk's part of a fetch. The copy is removed."""
        copy = shlex.quote(f"{directory}/.bench-disk-write")
        out = self.sh(
            f"sync && a=$(date +%s.%N) && dd if={ROOT}/{served.path} of={copy} bs=1M "
            f'conv=fsync status=none && b=$(date +%s.%N) && rm -f {copy} && echo "$a $b"'
        ).split()
        return float(out[-1]) - float(out[-2])

    def requests(self, served: Served) -> int:
        """How many requests for SERVED the server has logged so far."""
        log = self.sh(f"cat {ROOT}/.requests.log 2>/dev/null || true").splitlines()
        entries = [json.loads(line) for line in log if line.strip()]
        return sum(1 for e in entries if str(e.get("path", "")).lstrip("/") == served.path)


def build_release(workdir: Path, label: str, pad: int, manifest: str | None) -> Variant:
    """examples/ai-server answering /predict with variant LABEL (a marker PAD dots long: every
    release its own id, the same uv.lock), with MANIFEST as its models.toml when given."""
    src = workdir / f"src-{label}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        EXAMPLE, src, ignore=shutil.ignore_patterns(".venv", "__pycache__", ".env*", "dist")
    )
    main = src / "main.py"
    main.write_text(mark(main.read_text(), label, pad))
    if manifest is not None:
        (src / "models.toml").write_text(manifest)
    dist = workdir / f"dist-{label}"
    shutil.rmtree(dist, ignore_errors=True)
    path = build_artifact(src, dist)
    return Variant(label, path, release_id_from_artifact(path))
