"""The releases the scenarios deploy, built from copies of examples/ai-server with the project's
own artifact builder. Every variant names itself in /predict's answer ("variant"), so the load
shows which code served each request; the markers have different lengths, so no two variants'
main.py have the same size (the artifacts' files all have mtime 0, and Python would trust a
stale .pyc left in a reused tree when size and mtime match)."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.artifact.build import build_artifact, release_id_from_artifact
from testkit.remote import put, ssh

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ai-server"
RELOCK_DEPENDENCY = "six"  # tiny, pure Python, no dependencies of its own

_PREDICT_END = '        "release": RELEASE,\n    }\n'
_HEALTH_DOC = '    """200 with the release once the model is loaded; 503 before that."""\n'


@dataclass(frozen=True)
class Variant:
    label: str
    path: Path
    release_id: str


def mark(text: str, label: str, pad: int) -> str:
    """main.py answering /predict with "variant": LABEL (a marker PAD dots long)."""
    if text.count(_PREDICT_END) != 1:
        raise RuntimeError("examples/ai-server/main.py changed: /predict's answer not found")
    marked = '        "release": RELEASE,\n        "variant": BENCH_VARIANT,\n    }\n'
    text = text.replace(_PREDICT_END, marked)
    return f"{text}\n# bench variant: {label} {'.' * pad}\nBENCH_VARIANT = {label!r}\n"


def crash_at_import(text: str) -> str:
    return text + 'raise RuntimeError("bench: this release crashes at import")\n'


def health_500(text: str) -> str:
    if text.count(_HEALTH_DOC) != 1:
        raise RuntimeError("examples/ai-server/main.py changed: /health's docstring not found")
    broken = '    return JSONResponse(status_code=500, content={"status": "broken (bench)"})\n'
    return text.replace(_HEALTH_DOC, _HEALTH_DOC + broken)


def add_dependency(pyproject: str, name: str) -> str:
    marker = "dependencies = [\n"
    if marker not in pyproject:
        raise RuntimeError("examples/ai-server/pyproject.toml has no `dependencies = [` line")
    return pyproject.replace(marker, f'{marker}    "{name}",\n', 1)


def relock_on_host(address: str, dependency: str = RELOCK_DEPENDENCY) -> Callable[[Path], None]:
    """A relock step: add DEPENDENCY to pyproject.toml and run `uv lock` on a sandbox host
    (which reaches the package index; this machine talks to loopback and guests only) with the
    uv at ~/.local/bin/uv, then bring the new uv.lock back."""

    def relock(src: Path) -> None:
        pyproject = src / "pyproject.toml"
        pyproject.write_text(add_dependency(pyproject.read_text(), dependency))
        work = "/tmp/bench-relock"
        ssh(address, f"rm -rf {work} && mkdir -p {work}")
        put(address, pyproject, f"{work}/pyproject.toml")
        put(address, src / "uv.lock", f"{work}/uv.lock")
        ssh(
            address,
            f"cd {work} && UV_PYTHON_DOWNLOADS=never ~/.local/bin/uv lock --python python3 2>&1",
            timeout=300,
        )
        lock = ssh(address, f"cat {shlex.quote(work)}/uv.lock")
        if f'name = "{dependency}"' not in lock:
            raise RuntimeError(f"uv lock did not add {dependency} to uv.lock")
        (src / "uv.lock").write_text(lock)

    return relock


def build(
    workdir: Path,
    label: str,
    pad: int,
    *,
    patch: Callable[[str], str] | None = None,
    relock: Callable[[Path], None] | None = None,
) -> Variant:
    """examples/ai-server copied to WORKDIR/src-LABEL, marked, patched and relocked as asked,
    packed into WORKDIR/dist-LABEL."""
    src = workdir / f"src-{label}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        EXAMPLE, src, ignore=shutil.ignore_patterns(".venv", "__pycache__", ".env*", "dist")
    )
    main = src / "main.py"
    text = mark(main.read_text(), label, pad)
    if patch:
        text = patch(text)
    main.write_text(text)
    if relock:
        relock(src)
    shutil.rmtree(workdir / f"dist-{label}", ignore_errors=True)
    path = build_artifact(src, workdir / f"dist-{label}")
    return Variant(label, path, release_id_from_artifact(path))
