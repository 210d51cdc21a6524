"""The release in service: with an artifact, upload it (skipped when the host has the release
or the same upload), then put it in service behind the health gate (lock, fresh release
directory, venv by lock hash, atomic switch, restart, health, automatic switch back). With
`rollback`, the previous (or named) release goes back through the same gate. With neither, the
current release is left alone and restarted only when its unit or .env changed, or through the
gate when `restart_current` asks for it."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.operations import files

from ai_deploy.artifact.build import ArtifactError
from ai_deploy.artifact.check import ArtifactLimits, CheckedArtifact, check_artifact
from ai_deploy.host.event_hooks import tell
from ai_deploy.host.facts import AppTreeFact
from ai_deploy.host.ops import release_in_service
from ai_deploy.host.settings import Spec, flag

_checked: dict[tuple[str, str, ArtifactLimits, bool], CheckedArtifact] = {}


def _artifact(path: str, app_module: str, limits: ArtifactLimits, http: bool) -> CheckedArtifact:
    """Check the artifact once per run (the same file for every host with the same limits)."""
    key = (path, app_module, limits, http)
    if key not in _checked:
        try:
            _checked[key] = check_artifact(
                Path(path).expanduser(), app_module, limits, models_allow_http=http
            )
        except ArtifactError as exc:
            raise OperationError(f"bad artifact: {exc}") from exc
    return _checked[key]


def _spec(action: str, release_id: str, **extra: object) -> Spec:
    token = host.data.get("rollout_lock_token") or None
    return Spec.from_data(
        host.data, action=action, release_id=release_id, lock_token=token, **extra
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
        http = Spec.from_data(d).models_allow_http
        art = _artifact(str(d.artifact), d.app_module, ArtifactLimits.from_data(d), http)
        extra: dict[str, object] = {
            "lock_hash": art.lock_hash,
            "artifact_sha256": art.sha256,
            "models": art.models,
        }
        on_host = tree.release_sha256.get(art.release_id)
        if on_host and on_host != art.sha256:
            raise OperationError(
                f"{host.name}: release {art.release_id} is on the host from another artifact "
                f"(sha256 {on_host[:16]}..., this one {art.sha256[:16]}...); a release id names "
                "one build: build with its own id (ai-deploy artifact build --id <git sha>), or "
                f"remove {d.app_root}/releases/{art.release_id} if it is not in service"
            )
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
        tell(host, "no release deployed yet (pass --data artifact=PATH)")
        return
    release_in_service(
        name=f"Ensure release {spec.release_id} serves and is healthy",
        spec=spec,
        restart=restart or flag(d.restart_current),
    )
