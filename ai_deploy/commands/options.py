"""Options that several commands share: where the hosts are (-i / -e), and a count that may not
be negative."""

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


def non_negative(text: str) -> int:
    """TEXT as a count; argparse names the value when it is negative."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value
