"""`ai-deploy artifact build`: the deterministic tar.gz of an app directory, .sha256 beside it.

The command checks uv.lock against pyproject.toml first (`uv lock --check`), unless
AI_DEPLOY_NO_LOCK_CHECK=1 says not to; in a git work tree it packs only what git sees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def app_module_of(directory: Path) -> str:
    """app_module as DIRECTORY's ai-deploy.toml sets it (top level), else main:app."""
    from ai_deploy.artifact.errors import ArtifactError
    from ai_deploy.settings.appfile import FILENAME, parse_app_settings
    from ai_deploy.settings.check import SettingsError

    path = directory / FILENAME
    if not path.is_file():
        return "main:app"
    try:
        value = parse_app_settings(path.read_text(), path).settings.get("app_module")
    except SettingsError as exc:
        raise ArtifactError("; ".join(exc.problems)) from None
    return str(value) if value else "main:app"


def build(
    directory: str,
    output: str,
    artifact_id: str | None,
    app_module: str | None,
    lock_check: bool = True,
) -> int:
    from ai_deploy.artifact.build import build_artifact, sha256_file
    from ai_deploy.artifact.lockcheck import NO_LOCK_CHECK_ENV, lock_check_skipped

    if app_module is None:
        app_module = app_module_of(Path(directory))

    if lock_check and lock_check_skipped():
        print(
            f"uv.lock not checked against pyproject.toml ({NO_LOCK_CHECK_ENV} is set)",
            file=sys.stderr,
        )
        lock_check = False
    path = build_artifact(
        Path(directory),
        Path(output),
        artifact_id=artifact_id,
        app_module=app_module,
        lock_check=lock_check,
    )
    print(f"sha256 {sha256_file(path)}", file=sys.stderr)
    print(path)
    return 0


def add_parser(sub: Any) -> None:
    artifact = sub.add_parser("artifact", help="build the deploy artifact")
    artifact_sub = artifact.add_subparsers(dest="artifact_command", metavar="ACTION", required=True)
    parser = artifact_sub.add_parser(
        "build", help="deterministic tar.gz of an app directory (+ .sha256 beside it)"
    )
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=".",
        help="the app directory (has pyproject.toml, uv.lock; default: the working directory)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="dist",
        metavar="OUTDIR",
        help="where it is written (default dist)",
    )
    parser.add_argument("--id", help="release id (CI passes the git SHA); default: content hash")
    parser.add_argument(
        "--app-module",
        default=None,
        metavar="MODULE:APP",
        help="uvicorn's APP; its file must be in DIR or DIR/src, where the host imports it from "
        "(default: app_module of DIR/ai-deploy.toml, else main:app)",
    )
    parser.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    output = args.output or str(Path(args.dir) / "dist")
    return build(args.dir, output, args.id, args.app_module)
