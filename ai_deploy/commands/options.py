"""Options that several commands share: where the hosts are (-i / -e; --host and --no-gcp for
the verbs that roll out), and a count that may not be negative."""

from __future__ import annotations

import argparse


def add_inventory(parser: argparse.ArgumentParser) -> None:
    """-i INV and -e ENV on PARSER."""
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


def add_target(parser: argparse.ArgumentParser, host_help: str) -> None:
    """--host ADDRESS (HOST_HELP) and --no-gcp on PARSER: deploy, rollback and restart."""
    parser.add_argument("--host", metavar="ADDRESS", help=host_help)
    parser.add_argument(
        "--no-gcp",
        action="store_true",
        help="a non-GCP target: no auth, firewall window or key (use --host, or the hosts of "
        "-i INV or of -e ENV; SSH as ssh_user with ssh_key of ai-deploy.toml's environment, "
        "or AI_DEPLOY_SSH_USER and AI_DEPLOY_SSH_PRIVATE_KEY: the key's text or path)",
    )


def non_negative(text: str) -> int:
    """TEXT as a count; argparse names the value when it is negative."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value
