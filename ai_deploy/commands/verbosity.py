"""`-v` of deploy, rollback and restart: everything instead of the short default (deploy and
rollback: pyinfra's whole stream, every operation and its results table, instead of what
changed on each host; restart: each step of the health gate, not only its verdict). It sets
AI_DEPLOY_VERBOSE, which a CI job may set itself, so every pyinfra run of the command, and any
child it starts, shows the same."""

from __future__ import annotations

import argparse
import os

from ai_deploy.report.output import VERBOSE_ENV

PYINFRA_STREAM = "pyinfra's whole stream (each operation, its results table), not only what changed"


def add_verbose(parser: argparse.ArgumentParser, what: str = PYINFRA_STREAM) -> None:
    """-v on PARSER; WHAT says what it prints."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", help=f"print {what} (or set {VERBOSE_ENV}=1)"
    )


def apply_verbose(args: argparse.Namespace) -> None:
    """Pass -v on through the environment."""
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"
