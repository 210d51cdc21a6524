"""The `ai-deploy` command: argument parsing, wired to one module per command (commands/)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from ai_deploy.commands.day2_cli import add_day2_verbs
from ai_deploy.commands.deploy import add_deploy_parser
from ai_deploy.commands.verbosity import add_verbose, apply_verbose


def _cmd_sandbox_up(args: argparse.Namespace) -> int:
    from ai_deploy.commands import sandbox

    return sandbox.up(args.count, args.name)


def _cmd_sandbox_list(args: argparse.Namespace) -> int:
    from ai_deploy.commands import sandbox

    return sandbox.list_hosts()


def _cmd_sandbox_down(args: argparse.Namespace) -> int:
    from ai_deploy.commands import sandbox

    return sandbox.down(args.names, args.all)


def _cmd_artifact_build(args: argparse.Namespace) -> int:
    from ai_deploy.commands.artifact import build

    return build(args.dir, args.output, args.id, args.app_module)


def _cmd_rollback(args: argparse.Namespace) -> int:
    from ai_deploy.commands.rollback import rollback

    return rollback(args.inventory, args.release)


def _cmd_status(args: argparse.Namespace) -> int:
    from ai_deploy.commands.status import show_status

    return show_status(args.inventory, args.json)


def _cmd_lock(args: argparse.Namespace) -> int:
    from ai_deploy.commands.lock import lock_command

    return lock_command(args.inventory, args.lock_command, force=getattr(args, "force", False))


def _cmd_pyinfra(args: argparse.Namespace) -> int:
    from ai_deploy.commands.pyinfra_cmd import run_pyinfra_here

    return run_pyinfra_here(args.inventory, args.args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ai_deploy.commands.demo import run_demo

    return run_demo()


def _cmd_config(args: argparse.Namespace) -> int:
    from ai_deploy.commands.config import show_config

    return show_config(args.environment, args.data, args.json)


def _cmd_init(args: argparse.Namespace) -> int:
    from ai_deploy.commands.init import run_init

    return run_init(
        args.dir,
        force=args.force,
        environment=args.environment or "production",
        project=args.project,
        zone=args.zone,
        instance=args.instance,
        repository=args.repository,
        service_account=args.service_account,
        transport=args.transport,
        repository_id=args.repository_id,
    )


def _add_inventory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i",
        "--inventory",
        metavar="INV",
        help="any pyinfra inventory file; ai-deploy.toml's settings apply to its hosts "
        "(default: inventories/prod.py)",
    )
    parser.add_argument(
        "-e",
        "--environment",
        metavar="ENV",
        help="the environment of ai-deploy.toml: its hosts and settings (default: production "
        "when the file has it)",
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

    sandbox = sub.add_parser("sandbox", help="throw-away local systemd hosts (root)")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    up = sandbox_sub.add_parser(
        "up", help="boot fresh hosts; prints the path of a pyinfra inventory for them"
    )
    up.add_argument("--count", type=int, default=1, help="how many hosts (default 1)")
    up.add_argument("--name", help="host name (NAME-1..N with --count > 1)")
    up.set_defaults(func=_cmd_sandbox_up)
    ls = sandbox_sub.add_parser("list", help="show sandbox hosts")
    ls.set_defaults(func=_cmd_sandbox_list)
    down = sandbox_sub.add_parser("down", help="remove hosts and everything they used")
    down.add_argument("names", nargs="*", metavar="NAME")
    down.add_argument("--all", action="store_true", help="remove every sandbox host")
    down.set_defaults(func=_cmd_sandbox_down)

    artifact = sub.add_parser("artifact", help="build the deploy artifact")
    artifact_sub = artifact.add_subparsers(dest="artifact_command", metavar="ACTION", required=True)
    build = artifact_sub.add_parser(
        "build", help="deterministic tar.gz of an app directory (+ .sha256 beside it)"
    )
    build.add_argument("dir", metavar="DIR", help="the app directory (has pyproject.toml, uv.lock)")
    build.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    build.add_argument("--id", help="release id (CI passes the git SHA); default: content hash")
    build.add_argument(
        "--app-module",
        default=None,
        metavar="MODULE:APP",
        help="uvicorn's APP; its file must be in DIR or DIR/src, where the host imports it from "
        "(default: app_module of DIR/ai-deploy.toml, else main:app)",
    )
    build.set_defaults(func=_cmd_artifact_build)
    add_deploy_parser(sub, _add_inventory)

    rollback = sub.add_parser(
        "rollback",
        help="put the previous (or the named) release back in service, behind the health gate",
        description="Put the previous (or the named) release back in service on each host, "
        "behind the deploy's health gate. Prints what changed and the gate's verdict per host "
        "(-v: pyinfra's whole stream), then the phase times and one summary; exit codes as for "
        "deploy (2, 14, 15, 16).",
    )
    rollback.add_argument("release", nargs="?", metavar="RELEASE", help="default: previous")
    _add_inventory(rollback)
    add_verbose(rollback)
    rollback.set_defaults(func=_cmd_rollback, day2=True)

    status = sub.add_parser(
        "status",
        help="per host: current release, kept releases, service, health, lock, cache size, "
        "log; "
        "exit 1 when a host is unreachable or not healthy",
    )
    _add_inventory(status)
    status.add_argument("--json", action="store_true", help="a JSON list, one object per host")
    status.set_defaults(func=_cmd_status, day2=True)
    add_day2_verbs(sub, _add_inventory)

    lock = sub.add_parser("lock", help="the per-host deploy lock")
    lock_sub = lock.add_subparsers(dest="lock_command", metavar="ACTION", required=True)
    lock_status = lock_sub.add_parser("status", help="who holds the lock on each host")
    _add_inventory(lock_status)
    lock_status.set_defaults(func=_cmd_lock, day2=True)
    lock_release = lock_sub.add_parser(
        "release", help="remove a stale lock (a dead or expired deploy); --force for any"
    )
    _add_inventory(lock_release)
    lock_release.add_argument("--force", action="store_true", help="remove a live holder's lock")
    lock_release.set_defaults(func=_cmd_lock, day2=True)

    config = sub.add_parser(
        "config",
        help="every setting with its value and where it comes from (checked, secrets masked)",
        description="Print every setting, its merged value and its source: group_data/all.py, "
        "group_data/prod.py, ai-deploy.toml (or AI_DEPLOY_SETTINGS), its "
        "[environments.ENV] table (hosts, ssh_user, ssh_key), the SSH variables, --data; later "
        "ones win; names left to app_name say 'derived from app_name'. Exits 2 naming each "
        "unknown or ill-typed setting or missing env_file / ssh_key file.",
    )
    config.add_argument(
        "-e", "--environment", metavar="ENV", help="apply [environments.ENV] of ai-deploy.toml"
    )
    config.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="as pyinfra's --data"
    )
    config.add_argument("--json", action="store_true", help="a JSON list of name, value, source")
    config.set_defaults(func=_cmd_config)

    init = sub.add_parser(
        "init",
        help="write ai-deploy.toml and .github/workflows/ai-cicd.yml into an app repository",
        description="Write the app's settings (ai-deploy.toml: every setting with its default, "
        "and its environments) and its GitHub workflow, then print the one-time GCP and GitHub "
        "set-up as commands with the names filled in. Refuses to overwrite without --force.",
    )
    init.add_argument("dir", nargs="?", default=".", metavar="DIR", help="the app (default .)")
    init.add_argument("--force", action="store_true", help="replace files that exist")
    init.add_argument(
        "-e", "--environment", metavar="ENV", help="the workflow's environment (production)"
    )
    init.add_argument("--project", help="GCP project id, filled into the printed commands")
    init.add_argument("--zone", help="the instance's zone")
    init.add_argument("--instance", help="the GPU VM's name")
    init.add_argument("--repository", metavar="OWNER/REPO", help="default: the origin remote")
    init.add_argument(
        "--repository-id",
        metavar="N",
        help="the repository's number, which the printed Workload Identity set-up trusts "
        "(`gh api repos/OWNER/REPO --jq .id`; default: that command, in the printed set-up)",
    )
    init.add_argument(
        "--service-account", default="ai-deploy", metavar="NAME", help="default ai-deploy"
    )
    init.add_argument(
        "--transport",
        choices=("direct", "iap"),
        default="direct",
        help="SSH through a per-deploy firewall window (direct) or IAP",
    )
    init.set_defaults(func=_cmd_init)

    pyinfra = sub.add_parser(
        "pyinfra",
        help="pyinfra INVENTORY deploy.py ARGS, from this installation, in this directory",
        description="Run pyinfra on the packaged inventory (or -i INV) and deploy.py, in the "
        "working directory, so the app's ai-deploy.toml and -e ENV apply. ARGS go to pyinfra: "
        "ai-deploy pyinfra -e staging -- --data artifact=dist/app.tar.gz",
    )
    _add_inventory(pyinfra)
    pyinfra.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="for pyinfra")
    pyinfra.set_defaults(func=_cmd_pyinfra)

    demo = sub.add_parser(
        "demo", help="deploy the example AI server to a local sandbox host and print its URL"
    )
    demo.set_defaults(func=_cmd_demo)
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
            from ai_deploy.ci.reach import run_reached, through_gcp
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
