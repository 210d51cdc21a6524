"""Secrets kept out of the CI log: every value of the .env given with env_file, and a provided
SSH private key, are masked in GitHub Actions (`::add-mask::`) before anything else is printed;
text about to be printed that holds something shaped like a key or token (see
ai_deploy.report.secretlike) has it masked first and is printed redacted."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from ai_deploy.report import output as ci_output
from ai_deploy.report.secretlike import find_secrets, redact, register
from ai_deploy.settings.ssh import SSH_KEY_ENV as PRIVATE_KEY_ENV

MIN_MASKED = 4  # shorter values ("1", "yes") would mask every occurrence in the log, uselessly


def env_values(text: str) -> list[str]:
    """The values of a .env file's KEY=VALUE lines, unquoted; comments and blanks skipped."""
    values = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        value = line.split("=", 1)[1].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if len(value) >= MIN_MASKED:
            values.append(value)
    return values


def mask_secrets(env_file: str | None, environ: Mapping[str, str]) -> int:
    """Mask what must never show in the log; returns how many values were masked."""
    values = []
    if env_file:
        path = Path(env_file).expanduser()
        if path.is_file():
            values += env_values(path.read_text(errors="replace"))
    key = environ.get(PRIVATE_KEY_ENV, "")
    if key.strip():
        values.append(key.strip())
    register(values)
    for value in values:
        ci_output.add_mask(value, env=environ)
    return len(values)


def mask_secret_like(
    text: str, environ: Mapping[str, str] | None = None, *, stream: TextIO | None = None
) -> str:
    """Have GitHub Actions mask every key- or token-like value in TEXT (`::add-mask::`, printed
    before TEXT is), and return TEXT redacted (*** in their place) for printing anywhere."""
    for value in find_secrets(text):
        if len(value) >= MIN_MASKED:
            ci_output.add_mask(value, env=environ, stream=stream)
    return redact(text)
