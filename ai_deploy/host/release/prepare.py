"""releases/<id> made ready: the uploaded artifact checked and extracted into a fresh directory
that is renamed into place, with its venv (one per uv.lock hash) built only when missing."""

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


def prepare_release(remote: Remote, spec: Spec, token: str, have_release: bool) -> None:
    """Make releases/<id> (fresh directory, renamed into place) with its venv ready."""
    layout = spec.layout
    release = layout.release(spec.release_id)
    rid = shlex.quote(spec.release_id)
    tmp = f"{layout.releases}/.tmp-{shlex.quote(spec.release_id)}-{token}"
    if not have_release:
        if not (spec.artifact_remote and spec.artifact_sha256):
            raise DeployFailed("release", f"release {spec.release_id} is not on the host")
        art = shlex.quote(spec.artifact_remote)
        check = remote.run(f"echo {spec.artifact_sha256}' '{art} | sha256sum -c --status")
        if not check.ok:
            raise DeployFailed(
                "release",
                f"the uploaded artifact {spec.artifact_remote} does not match sha256 "
                f"{spec.artifact_sha256}; run the deploy again",
            )
        extract = remote.run(
            f"set -e; rm -rf {tmp}; mkdir -p {tmp}; "
            f"tar -xzf {art} -C {tmp} --no-same-owner; "
            f"printf '%s\\n' {rid} > {tmp}/REVISION; "
            f"chown -R {shlex.quote(spec.code_owner)}: {tmp}; chmod 0755 {tmp}"
        )
        if not extract.ok:
            remote.run(f"rm -rf {tmp}")
            raise DeployFailed(
                "release", f"extracting the artifact failed:\n{tail(extract.stderr)}"
            )
    workdir = release if have_release else tmp
    lock_hash = spec.lock_hash or _lock_hash(remote, spec, workdir)
    ensure_venv(remote, spec, lock_hash, workdir, None if have_release else tmp)
    link = f"ln -sfn ../../venvs/{shlex.quote(lock_hash)} {workdir}/.venv"
    if have_release:
        remote.run(link)
        return
    done = remote.run(
        f"set -e; {link}; mv -T {tmp} {release}; rm -f {shlex.quote(spec.artifact_remote or '')}"
    )
    if not done.ok:
        remote.run(f"rm -rf {tmp}")
        raise DeployFailed(
            "release", f"could not move the release into place:\n{tail(done.stderr)}"
        )


def _lock_hash(remote: Remote, spec: Spec, workdir: str) -> str:
    found = remote.run(f"sha256sum {workdir}/uv.lock")
    if not found.ok or not found.stdout:
        raise DeployFailed("venv", f"release {spec.release_id} has no uv.lock")
    return found.stdout[0].split()[0]


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
