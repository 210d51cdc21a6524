"""What looks like a key or a token in text meant for people, and that text with it blanked.

Pure functions and one process-wide registry, no output: ai_deploy.ci.secrets turns what is
found here into `::add-mask::` commands, the pyinfra stream, notifications and the job summary
print only redacted text. Over-masking a log line is cheap; a leaked key is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "MASK",
    "LineRedactor",
    "find_secrets",
    "known_values",
    "redact",
    "register",
]

MASK = "***"
MIN_KNOWN = 4  # shorter registered values ("1", "yes") would blank every occurrence

# Tokens recognisable by their shape alone.
_TOKEN_PATTERNS = (
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{8,}",  # OpenAI / Anthropic style keys
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\bya29\.[0-9A-Za-z_.-]{20,}",  # Google OAuth access tokens
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # JWTs
    r"(?<=[Bb]earer )[A-Za-z0-9._~+/-]{16,}=*",  # Authorization: Bearer ...
)
_TOKEN = re.compile("|".join(f"(?:{p})" for p in _TOKEN_PATTERNS))

# NAME=VALUE and NAME: VALUE where NAME ends in a word like KEY, TOKEN, SECRET, PASSWORD
# (OPENAI_API_KEY, github_token, db-password; "monkey=1" and KEY_TTL_MINUTES=5 are left alone).
# Quotes around the name or the value are allowed, as in JSON, YAML, Python reprs and shell.
# Placeholders (KEY=VALUE, TOKEN=$TOKEN, <key>) and file paths are not values.
_ASSIGNMENT = re.compile(
    r"(?i)\b(?:[a-z0-9]+[_.-])*(?:api[_-]?key|key|token|secret|password|passwd|passphrase|"
    r"credentials?)s?"
    r"[\"']?\s*[:=]\s*[\"']?"
    r"(?-i:(?![A-Z][A-Z_]*\b(?![-+/=.])))(?![$<*/~]|\.\.?/)"
    r"(?P<value>[^\s\"',;&)}\]]+)"
)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_known: set[str] = set()


def register(values: Iterable[str]) -> None:
    """Remember VALUES (for example the .env's) so redact() blanks them wherever they appear."""
    for value in values:
        value = value.strip()
        if len(value) >= MIN_KNOWN:
            _known.add(value)
            _known.update(p.strip() for p in value.splitlines() if len(p.strip()) >= MIN_KNOWN)


def known_values() -> frozenset[str]:
    return frozenset(_known)


def find_secrets(text: str) -> list[str]:
    """The key- or token-like values in TEXT, each once, longest first: shaped tokens, the
    values of KEY=/TOKEN=/SECRET=/PASSWORD= style assignments, private key blocks (whole and
    line by line) and registered values that occur in it."""
    found: list[str] = []
    for block in _PEM_BLOCK.findall(text):
        found.append(block.strip())
        found += [line.strip() for line in block.splitlines() if line.strip()]
    found += [m.group(0) for m in _TOKEN.finditer(text)]
    found += [m.group("value") for m in _ASSIGNMENT.finditer(text) if m.group("value") != MASK]
    found += [value for value in _known if value in text]
    unique = {value for value in found if value and value != MASK}
    return sorted(unique, key=lambda v: (-len(v), v))


def redact(text: str) -> str:
    """TEXT with every value find_secrets() sees replaced by ***; the rest unchanged."""
    text = _PEM_BLOCK.sub(MASK, text)
    text = _TOKEN.sub(MASK, text)
    text = _ASSIGNMENT.sub(lambda m: m.group(0)[: m.start("value") - m.start(0)] + MASK, text)
    for value in sorted(_known, key=len, reverse=True):
        text = text.replace(value, MASK)
    if "\x1b" in text:
        # A colour code right before a token hides its word boundary: look again without them.
        for value in find_secrets(_ANSI.sub("", text)):
            text = text.replace(value, MASK)
    return text


class LineRedactor:
    """redact() for a stream read line by line: a private key block split over lines is
    blanked from its BEGIN line to its END line."""

    def __init__(self) -> None:
        self._in_key = False

    def __call__(self, line: str) -> str:
        end = line[len(line.rstrip("\r\n")) :]
        if self._in_key:
            if _PEM_END.search(line):
                self._in_key = False
                return MASK + end
            return MASK + end
        begin = _PEM_BEGIN.search(line)
        if begin and not _PEM_END.search(line, begin.end()):
            self._in_key = True
            return redact(line[: begin.start()]) + MASK + end
        return redact(line)
