"""releases/<id> made ready: the uploaded artifact checked and extracted into a fresh directory
(ai_deploy.host.release.extract: limits, free space, nothing outside the release, modes set)
that is renamed into place, with its model files fetched and linked
(ai_deploy.host.release.models) and linked to its venv (ai_deploy.host.release.venv). A refusal
leaves neither the temporary directory nor the upload, and is journalled."""

from __future__ import annotations

import shlex
from typing import NoReturn

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.release.extract import extract_artifact
from ai_deploy.host.release.models import ensure_models
from ai_deploy.host.release.venv import ensure_venv
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec


def prepare_release(remote: Remote, spec: Spec, token: str, have_release: bool) -> None:
    """Make releases/<id> (fresh directory, renamed into place) with its venv ready."""
    layout = spec.layout
    release = layout.release(spec.release_id)
    tmp = f"{layout.releases}/.tmp-{shlex.quote(spec.release_id)}-{token}"
    lock_hash = spec.lock_hash
    if not have_release:
        if not (spec.artifact_remote and spec.artifact_sha256):
            raise DeployFailed("release", f"release {spec.release_id} is not on the host")
        art = shlex.quote(spec.artifact_remote)
        check = remote.run(f"echo {spec.artifact_sha256}' '{art} | sha256sum -c --status")
        if not check.ok:
            _refused(
                remote,
                tmp,
                art,
                f"the uploaded artifact {spec.artifact_remote} does not match sha256 "
                f"{spec.artifact_sha256}; run the deploy again",
                "artifact-sha256-mismatch",
            )
        done = extract_artifact(remote, spec, art, tmp)
        if not done.ok:
            message = (
                f"extracting the artifact failed: {done.reason}"
                if done.kind == "extract-failed"
                else f"the artifact was refused on the host: {done.reason}"
            )
            _refused(remote, tmp, art, message, done.kind, done.reason)
        lock_hash = lock_hash or done.lock_hash
    workdir = release if have_release else tmp
    lock_hash = lock_hash or _lock_hash(remote, spec, workdir)
    try:
        ensure_models(remote, spec, workdir, fresh=not have_release)
    except DeployFailed:
        if not have_release:
            remote.run(f"rm -rf {tmp}; rm -f {shlex.quote(spec.artifact_remote or '')}")
        raise
    ensure_venv(remote, spec, lock_hash, workdir, None if have_release else tmp)
    link = f"ln -sfn ../../venvs/{shlex.quote(lock_hash)} {workdir}/.venv"
    if have_release:
        remote.run(link)
        return
    moved = remote.run(
        f"set -e; {link}; mv -T {tmp} {release}; rm -f {shlex.quote(spec.artifact_remote or '')}"
    )
    if not moved.ok:
        remote.run(f"rm -rf {tmp}")
        raise DeployFailed(
            "release", f"could not move the release into place:\n{tail(moved.stderr)}"
        )


def _refused(
    remote: Remote, tmp: str, art: str, message: str, kind: str, reason: str = ""
) -> NoReturn:
    """Leave nothing of this try on the host (the temp dir, the upload) and stop, with a
    revisions.log line for the failure."""
    remote.run(f"rm -rf {tmp}; rm -f {art}")
    raise DeployFailed("release", message, journal=f"{kind} reason={reason or message!r}")


def _lock_hash(remote: Remote, spec: Spec, workdir: str) -> str:
    found = remote.run(f"sha256sum {workdir}/uv.lock")
    if not found.ok or not found.stdout:
        raise DeployFailed("venv", f"release {spec.release_id} has no uv.lock")
    return found.stdout[0].split()[0]
