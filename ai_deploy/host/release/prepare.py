"""releases/<id> made ready: the uploaded artifact checked and extracted into a fresh directory
that is renamed into place, linked to its venv (ai_deploy.host.release.venv)."""

from __future__ import annotations

import shlex

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import ARTIFACT_SHA256
from ai_deploy.host.release.venv import ensure_venv
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec


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
            f"printf '%s\\n' {spec.artifact_sha256} > {tmp}/{ARTIFACT_SHA256}; "
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
