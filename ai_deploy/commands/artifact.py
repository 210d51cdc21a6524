"""`ai-deploy artifact build`: the deterministic tar.gz of an app directory, .sha256 beside it."""

from __future__ import annotations

import sys
from pathlib import Path


def build(directory: str, output: str, artifact_id: str | None, app_module: str) -> int:
    from ai_deploy.artifact.build import build_artifact, sha256_file

    path = build_artifact(
        Path(directory), Path(output), artifact_id=artifact_id, app_module=app_module
    )
    print(f"sha256 {sha256_file(path)}", file=sys.stderr)
    print(path)
    return 0
