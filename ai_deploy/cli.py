"""The `ai-deploy` command: argument parsing and dispatch to the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_sandbox_up(args: argparse.Namespace) -> int:
    from ai_deploy.sandbox import hosts

    started, inventory = hosts.up(count=args.count, name=args.name)
    for h in started:
        print(f"sandbox host {h.name} ready at {h.address}", file=sys.stderr)
    print(inventory)
    return 0


def _cmd_sandbox_list(args: argparse.Namespace) -> int:
    from ai_deploy.sandbox import hosts

    found = hosts.list_hosts()
    if not found:
        print("no sandbox hosts", file=sys.stderr)
        return 0
    print(f"{'NAME':<20} {'ADDRESS':<15} {'STATE':<8} INVENTORY")
    for h in found:
        state = "running" if h.running else "stopped"
        print(f"{h.name:<20} {h.address:<15} {state:<8} {h.inventory}")
    return 0


def _cmd_sandbox_down(args: argparse.Namespace) -> int:
    from ai_deploy.sandbox import hosts

    if not args.all and not args.names:
        print("name the hosts to remove, or pass --all", file=sys.stderr)
        return 2
    removed = hosts.down(None if args.all else args.names)
    print(f"removed {len(removed)} sandbox host(s){': ' + ', '.join(removed) if removed else ''}")
    return 0


def _cmd_artifact_build(args: argparse.Namespace) -> int:
    from ai_deploy.artifact import build_artifact, sha256_file

    path = build_artifact(Path(args.dir), Path(args.output), artifact_id=args.id)
    print(f"sha256 {sha256_file(path)}", file=sys.stderr)
    print(path)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from ai_deploy.cideploy import DeployOptions, run_deploy

    opts = DeployOptions.from_env(
        Path(args.artifact),
        inventory=args.inventory,
        host=args.host,
        use_gcp=not args.no_gcp,
        dry_run=args.dry_run,
        data=args.data,
        health_attempts=args.health_attempts,
        health_interval_s=args.health_interval,
        target_tag=args.target_tag,
        network=args.network,
    )
    return run_deploy(opts)


def _cmd_rollback(args: argparse.Namespace) -> int:
    from ai_deploy.remote import run_pyinfra

    return run_pyinfra(args.inventory, {"rollback": args.release or "previous"})


def _cmd_status(args: argparse.Namespace) -> int:
    from ai_deploy.status import show_status

    return show_status(args.inventory)


def _cmd_lock(args: argparse.Namespace) -> int:
    from ai_deploy.status import lock_command

    return lock_command(args.inventory, args.lock_command, force=getattr(args, "force", False))


def _cmd_demo(args: argparse.Namespace) -> int:
    from ai_deploy.demo import run_demo

    return run_demo()


def _add_inventory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i",
        "--inventory",
        metavar="INV",
        help="pyinfra inventory file (default: inventories/prod.py)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-deploy",
        description="Deploy the AI server with pyinfra: zero downtime, instant rollback.",
    )
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
    build.set_defaults(func=_cmd_artifact_build)
    deploy = sub.add_parser(
        "deploy",
        help="the CI entry: GCP auth, firewall window, ephemeral SSH key, pyinfra, health, "
        "notifications",
        description="Deploy ARTIFACT to the GCP instance named by GCP_PROJECT_ID, GCP_ZONE and "
        "GCP_INSTANCE (or to --host). Exit codes: 2 bad input, 10 auth, 11 runner address, "
        "12 firewall, 13 SSH, 14 deploy, 15 health (previous release put back), 16 rollback.",
    )
    deploy.add_argument("--artifact", required=True, metavar="PATH", help="the release tar.gz")
    _add_inventory(deploy)
    deploy.add_argument("--host", metavar="ADDRESS", help="deploy to this address (no lookup)")
    deploy.add_argument(
        "--no-gcp",
        action="store_true",
        help="a non-GCP target: no auth, firewall window or key (use --host and "
        "AI_DEPLOY_SSH_PRIVATE_KEY)",
    )
    deploy.add_argument(
        "--dry-run", action="store_true", help="print what would be done; change nothing"
    )
    deploy.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="passed to pyinfra"
    )
    deploy.add_argument("--health-attempts", type=int, help="outside health checks (default 12)")
    deploy.add_argument("--health-interval", type=float, help="seconds between them (default 5)")
    deploy.add_argument("--target-tag", help="instances the SSH rule targets (default ai-server)")
    deploy.add_argument("--network", help="VPC network of the SSH rule (default default)")
    deploy.set_defaults(func=_cmd_deploy)

    rollback = sub.add_parser(
        "rollback",
        help="put the previous (or the named) release back in service, behind the health gate",
    )
    rollback.add_argument("release", nargs="?", metavar="RELEASE", help="default: previous")
    _add_inventory(rollback)
    rollback.set_defaults(func=_cmd_rollback)

    status = sub.add_parser(
        "status", help="per host: current release, kept releases, service, health, lock, log"
    )
    _add_inventory(status)
    status.set_defaults(func=_cmd_status)

    lock = sub.add_parser("lock", help="the per-host deploy lock")
    lock_sub = lock.add_subparsers(dest="lock_command", metavar="ACTION", required=True)
    lock_status = lock_sub.add_parser("status", help="who holds the lock on each host")
    _add_inventory(lock_status)
    lock_status.set_defaults(func=_cmd_lock)
    lock_release = lock_sub.add_parser(
        "release", help="remove a stale lock (a dead or expired deploy); --force for any"
    )
    _add_inventory(lock_release)
    lock_release.add_argument("--force", action="store_true", help="remove a live holder's lock")
    lock_release.set_defaults(func=_cmd_lock)

    demo = sub.add_parser(
        "demo", help="deploy the example AI server to a local sandbox host and print its URL"
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ai_deploy.artifact import ArtifactError
    from ai_deploy.remote import RemoteError
    from ai_deploy.sandbox.image import SandboxError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SandboxError, ArtifactError, RemoteError) as exc:
        print(f"ai-deploy: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ai-deploy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
