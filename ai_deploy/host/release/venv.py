"""venvs/<lock hash>: one venv per distinct uv.lock, shared by the releases that have that lock,
built with `uv sync --frozen` only when missing."""

from __future__ import annotations

import shlex
import time

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import VENV_COMPLETE
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec


def _uv_env(spec: Spec) -> str:
    pairs = {"UV_PYTHON_DOWNLOADS": spec.uv_python_downloads, **spec.uv_env}
    return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in pairs.items())


def ensure_venv(
    remote: Remote, spec: Spec, lock_hash: str, workdir: str, cleanup: str | None
) -> None:
    """venvs/<lock_hash> complete, built with `uv sync --frozen` only when missing."""
    venv = spec.layout.venv(lock_hash)
    if remote.run(f"test -e {venv}/{VENV_COMPLETE}").ok:
        remote.say(f"venv {lock_hash[:12]} is ready (uv.lock unchanged): no sync")
        return
    remote.say(f"building venv {lock_hash[:12]} with uv sync --frozen (the service keeps serving)")
    started = time.monotonic()
    sync = remote.run(
        f"rm -rf {venv} && cd {workdir} && env UV_PROJECT_ENVIRONMENT={venv} {_uv_env(spec)} "
        f"{shlex.quote(spec.uv_path)} sync --frozen --no-install-project --no-dev "
        f"--compile-bytecode --python {shlex.quote(spec.uv_python)} 2>&1 && "
        # uv leaves its own .lock world-writable: the service must not be able to write here.
        f"chmod -R go-w {venv} && touch {venv}/{VENV_COMPLETE}",
        timeout=3600,
    )
    if not sync.ok:
        remote.run(f"rm -rf {venv}" + (f" {cleanup}" if cleanup else ""))
        raise DeployFailed(
            "venv",
            "uv sync --frozen failed; the running release is untouched. Last lines:\n"
            + tail(sync.stdout + sync.stderr),
        )
    remote.say(f"venv {lock_hash[:12]} built in {time.monotonic() - started:.1f} s")
