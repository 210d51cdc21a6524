"""The engine benchmark's steps on its sandbox host: the stand-in engine's .env (a start-up in
phases sized from one number), the page cache of the model files emptied and the compile cache
removed (a deploy "without preparation"), the disk's cold and warm read of the model file, and
what the host tells after a start (the engine's phase timings, the outage the deploy recorded)."""

from __future__ import annotations

import json
import shlex

from bench.engine_report import StartFigures, parse_start
from bench.models_host import MODEL, ROOT
from bench.ours import APP_ROOT
from testkit.remote import sudo, write_file

MODEL_DIR = f"models/{MODEL}"  # relative to the release: the units' working directory
COMPILE_CACHE = f"{APP_ROOT}/cache/.cache/ai-server/compile"  # XDG_CACHE_HOME/ai-server/compile
LAST_START = f"{APP_ROOT}/last-start.json"
LOG_DIR = "/var/log/ai-server"
# Drops FILES' (or every file under a directory's) pages from the page cache: a clean page
# dropped is read from disk again, as after a reboot or under memory pressure.
_EVICT = (
    "import os, sys\n"
    "def evict(path):\n"
    "    fd = os.open(path, os.O_RDONLY)\n"
    "    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n"
    "    os.close(fd)\n"
    "for top in sys.argv[1:]:\n"
    "    walk = [(r, n) for r, _, names in os.walk(top) for n in names]\n"
    "    for path in [top] if os.path.isfile(top) else [os.path.join(r, n) for r, n in walk]:\n"
    "        evict(path)\n"
)
_READ = (  # prints "COLD_S WARM_S": FILE read once after its pages were dropped, then again
    _EVICT + "import time\n"
    "def read():\n"
    "    t = time.monotonic()\n"
    "    with open(sys.argv[1], 'rb') as f:\n"
    "        while f.read(1 << 20):\n"
    "            pass\n"
    "    return time.monotonic() - t\n"
    "print(read(), read())\n"
)


def engine_env(start_s: float) -> dict[str, str]:
    """The engine's variables for a START_S-second cold start: weights (the model files read
    from disk: sized to take about a sixth) and a cold compile half of it, so that about two
    thirds of the start is weights and compile; the model's load and the warm-up a sixth each;
    a warm compile a thirtieth."""
    sixth = start_s / 6
    return {
        "ENGINE_MODEL_DIR": MODEL_DIR,
        "MODEL_LOAD_SECONDS": f"{sixth:g}",
        "ENGINE_COMPILE_SECONDS": f"{start_s / 2:g}",
        "ENGINE_COMPILE_WARM_SECONDS": f"{start_s / 30:g}",
        "ENGINE_WARMUP_SECONDS": f"{sixth:g}",
    }


def write_env(address: str, env: dict[str, str]) -> None:
    """The .env the deploy keeps (written before the first deploy)."""
    sudo(address, f"mkdir -p {APP_ROOT}")
    text = "".join(f"{k}={v}\n" for k, v in env.items())
    write_file(address, f"{APP_ROOT}/.env", text, mode="600", owner="ubuntu")


def read_figures(address: str, served_path: str) -> tuple[float, float]:
    """(cold, warm) seconds of one read of the served model file inside the host."""
    path = shlex.quote(f"{ROOT}/{served_path}")
    out = sudo(address, f"sync && python3 -c {shlex.quote(_READ)} {path}").split()
    return float(out[-2]), float(out[-1])


def unprepare(address: str, *, compile_cache: bool) -> None:
    """The model store's pages dropped from the page cache; with COMPILE_CACHE, the engine's
    compile cache removed too (its next start compiles cold)."""
    store = shlex.quote(f"{APP_ROOT}/models")
    rm = f" && rm -rf {shlex.quote(COMPILE_CACHE)}" if compile_cache else ""
    sudo(address, f"sync && python3 -c {shlex.quote(_EVICT)} {store}{rm}")


def last_start(address: str) -> StartFigures | None:
    """The engine's last start, from the newest service error log (uvicorn's logger; its
    access lines make the file too long to read whole)."""
    text = sudo(
        address,
        f"f=$(ls -t {LOG_DIR}/*error.log 2>/dev/null | head -1); "
        '[ -n "$f" ] && grep -a "start-up phases" "$f" | tail -n 1 || true',
        check=False,
    )
    return parse_start(text)


def recorded_outage(address: str, release: str) -> float | None:
    """outage_s from the host's last-start record when it is RELEASE's (None when the deploy
    keeps no such record)."""
    text = sudo(address, f"cat {LAST_START} 2>/dev/null || true", check=False)
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("release") != release:
        return None
    value = record.get("outage_s")
    return float(value) if isinstance(value, int | float) else None
