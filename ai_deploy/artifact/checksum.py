"""The `<artifact>.sha256` beside a release tar.gz (`sha256sum` format, written by
`ai-deploy artifact build` and uploaded with it by the workflow): checked against the file
before a deploy. In CI (GITHUB_ACTIONS=true) it must be there, so an artifact swapped or cut
short between the build job and the deploy job is refused; AI_DEPLOY_REQUIRE_SHA256=false
lets a CI deploy go on without one (said in the output)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ai_deploy.artifact.errors import ArtifactError

REQUIRE_ENV = "AI_DEPLOY_REQUIRE_SHA256"
_LINE = re.compile(r"([0-9a-fA-F]{64})\s+\*?(\S.*)")


def sidecar_of(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".sha256")


def required(environ: Mapping[str, str]) -> bool:
    setting = environ.get(REQUIRE_ENV, "").strip().lower()
    if setting in ("false", "0", "no"):
        return False
    if setting in ("true", "1", "yes"):
        return True
    if setting:
        raise ArtifactError(f"{REQUIRE_ENV}={setting!r}: use true or false")
    return environ.get("GITHUB_ACTIONS") == "true"


def check_sidecar(artifact: Path, sha256: str, environ: Mapping[str, str]) -> str:
    """What to say about ARTIFACT's .sha256 (its digest is SHA256); ArtifactError when it is
    required and missing, unreadable, or names another digest or file."""
    path = sidecar_of(artifact)
    if not path.is_file():
        if required(environ):
            raise ArtifactError(
                f"{path.name} is missing beside {artifact}: in CI the deploy checks the artifact "
                "against the checksum the build wrote (upload dist/*.tar.gz.sha256 with the "
                f"tar.gz), or set {REQUIRE_ENV}=false to deploy without it"
            )
        return f"no {path.name} beside the artifact: not checked"
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    found = _LINE.fullmatch(text.splitlines()[0]) if text else None
    if found is None:
        raise ArtifactError(f"{path} is not a `sha256sum` line (HEX  FILENAME)")
    digest, name = found.group(1).lower(), found.group(2).strip()
    if name != artifact.name:
        raise ArtifactError(f"{path} is the checksum of {name}, not of {artifact.name}")
    if digest != sha256:
        raise ArtifactError(
            f"{artifact.name} does not match {path.name}: its sha256 is {sha256[:16]}..., the "
            f"build wrote {digest[:16]}...; the artifact changed after it was built"
        )
    return f"{path.name} matches"


__all__ = ["REQUIRE_ENV", "check_sidecar", "required", "sidecar_of"]
