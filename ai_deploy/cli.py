"""The `ai-deploy` command: one module per verb under commands/, each adding its own parser;
this module lists them, reads the arguments and runs the chosen verb."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from ai_deploy.commands import (
    artifact,
    audit,
    cache,
    config,
    demo,
    deploy,
    exec,
    init,
    lock,
    logs,
    pyinfra_cmd,
    releases,
    restart,
    rollback,
    sandbox,
    status,
)
from ai_deploy.commands.verbosity import apply_verbose

# Each verb's module adds its own parser (`add_parser(sub)`), in the order `--help` lists them.
VERBS = (
    sandbox,
    artifact,
    deploy,
    rollback,
    status,
    logs,
    releases,
    audit,
    exec,
    restart,
    cache,
    lock,
    config,
    init,
    pyinfra_cmd,
    demo,
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-deploy")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-deploy",
        description="Deploy the AI server with pyinfra: zero downtime, instant rollback.",
    )
    parser.add_argument("--version", action="version", version=f"ai-deploy {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


def _settings_from_here(args: argparse.Namespace) -> None:
    """The app's ai-deploy.toml in the working directory, and the chosen environment, reach
    every pyinfra run and child (they run from the project's directory)."""
    from pathlib import Path

    from ai_deploy.settings.appfile import ENVIRONMENT_ENV, FILENAME, PATH_ENV

    here = Path.cwd() / FILENAME
    if not os.environ.get(PATH_ENV) and here.is_file():
        os.environ[PATH_ENV] = str(here)
    if getattr(args, "environment", None) and args.command != "init":
        os.environ[ENVIRONMENT_ENV] = args.environment


def main(argv: Sequence[str] | None = None) -> int:
    from ai_deploy.artifact.build import ArtifactError
    from ai_deploy.inventory import RemoteError
    from ai_deploy.project import ProjectError
    from ai_deploy.sandbox.image import SandboxError

    # pyinfra's CLI patches the standard library with gevent when the host commands import it,
    # after ssl is loaded; gevent's warning about that says nothing a user can act on.
    warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already been")
    args = build_parser().parse_args(argv)
    _settings_from_here(args)
    apply_verbose(args)
    try:
        if getattr(args, "day2", False):
            from ai_deploy.ci.connect.reach import run_reached, through_gcp
            from ai_deploy.inventory import resolve_inventory

            if through_gcp(os.environ):
                # GCP_ZONE and GCP_INSTANCE: reach the instance as a deploy does (window or
                # IAP, a key for this run), run the command, close everything.
                given = list(argv) if argv is not None else sys.argv[1:]
                return run_reached(resolve_inventory(args.inventory), given, os.environ)
        return int(args.func(args))
    except (SandboxError, ArtifactError, RemoteError, ProjectError) as exc:
        print(f"ai-deploy: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ai-deploy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader of our output went away (`ai-deploy status | head -1`): end quietly, with
    what a shell reports for a command stopped by SIGPIPE. stdout is pointed at /dev/null so
    the interpreter's last flush cannot complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
