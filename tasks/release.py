"""The release in service: with an artifact, upload it (skipped when the host has the release
or the same upload), then put it in service behind the health gate (lock, fresh release
directory, venv by lock hash, atomic switch, restart, health, automatic switch back). With
`rollback`, the previous (or named) release goes back through the same gate. With neither, the
current release is left alone and restarted only when its unit or .env changed."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import OperationError, deploy
from pyinfra.operations import files

from ai_deploy.artifact import ArtifactError
from ai_deploy.artifact_check import CheckedArtifact, check_artifact
from ai_deploy.facts import AppTreeFact
from ai_deploy.gate import Spec
from ai_deploy.ops import release_in_service

_checked: dict[str, CheckedArtifact] = {}


def _artifact(path: str, app_module: str) -> CheckedArtifact:
    """Check the artifact once per run (it is the same file for every host)."""
    if path not in _checked:
        try:
            _checked[path] = check_artifact(Path(path).expanduser(), app_module)
        except ArtifactError as exc:
            raise OperationError(f"bad artifact: {exc}") from exc
    return _checked[path]


def _who() -> str:
    actor = os.environ.get("GITHUB_ACTOR")
    if actor:
        run = os.environ.get("GITHUB_RUN_ID", "?")
        return f"{actor}@github-run-{run}"
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _spec(action: str, release_id: str, **extra: object) -> Spec:
    d = host.data
    return Spec(
        app_root=d.app_root,
        service=f"{d.app_name}.service",
        action=action,
        release_id=release_id,
        port=int(d.app_port),
        health_path=d.health_path,
        deadline_s=float(d.health_deadline_s),
        interval_s=float(d.health_interval_s),
        fail_after_errors=int(d.health_fail_after_errors),
        keep=int(d.releases_keep),
        lock_wait_s=float(d.lock_wait_s),
        lock_stale_s=float(d.lock_stale_s),
        who=_who(),
        deployer=socket.gethostname(),
        pid=os.getpid(),
        code_owner=d.code_owner,
        uv_path=d.uv_path,
        uv_python=d.uv_python,
        uv_python_downloads=d.uv_python_downloads,
        uv_env={str(k): str(v) for k, v in dict(d.uv_env or {}).items()},
        log_dir=d.app_log_dir,
        app_name=d.app_name,
        strategy=d.deploy_strategy,
        colour_ports=tuple(int(p) for p in d.bluegreen_ports),
        drain_s=float(d.bluegreen_drain_s),
        nginx_upstream=d.bluegreen_upstream,
        **extra,  # type: ignore[arg-type]
    )


@deploy("Release in service")
def release_serving(restart: bool = False) -> None:
    d = host.data
    tree = host.get_fact(
        AppTreeFact, app_root=d.app_root, service=f"{d.app_name}.service", _sudo=True
    )
    if d.artifact and d.rollback:
        raise OperationError("give either artifact or rollback, not both")
    if d.artifact:
        art = _artifact(str(d.artifact), d.app_module)
        extra: dict[str, object] = {"lock_hash": art.lock_hash, "artifact_sha256": art.sha256}
        if art.release_id not in tree.releases:
            upload = f"{d.app_root}/.incoming/{art.path.name}"
            files.put(
                name=f"Upload artifact {art.path.name} (skipped when the host has it)",
                src=str(art.path),
                dest=upload,
                user="root",
                group="root",
                mode="600",
            )
            extra["artifact_remote"] = upload
        spec = _spec("deploy", art.release_id, **extra)
    elif d.rollback:
        target = tree.previous if d.rollback == "previous" else str(d.rollback)
        if not target:
            raise OperationError(f"{host.name}: no previous release to roll back to")
        if target not in tree.releases:
            kept = ", ".join(tree.releases) or "none"
            raise OperationError(f"{host.name}: release {target} is not on the host (kept: {kept})")
        spec = _spec("rollback", target)
    elif tree.current:
        spec = _spec("restart", tree.current)
    else:
        logger.info(f"{host.print_prefix}no release deployed yet (pass --data artifact=PATH)")
        return
    release_in_service(
        name=f"Ensure release {spec.release_id} serves and is healthy",
        spec=spec,
        restart=restart,
    )
