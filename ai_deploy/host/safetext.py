"""Text that came from a host, made safe to print on the operator's terminal.

A log line, a revisions.log entry, a release directory's name or an app's HTTP answer is
written by whoever controls the host or the app. Printed raw, its escape sequences act on the
terminal: OSC 52 writes the clipboard, cursor moves and erasures hide or rewrite earlier lines,
a carriage return overwrites the line it is on, bidirectional overrides show text in another
order than it is. So every control character (C0 but tab, DEL, C1) and every bidirectional or
line-separator format character is shown as its escape (`\\x1b`, `\\r`, `\\u202e`) instead:
visible, inert, and the rest of the line unchanged.

The day-2 commands print host text through here: logs, releases, audit, status, lock, restart's
per-host lines, and exec (its output is the user's own command's, but it comes line by line from
several hosts, under `HOST | ` prefixes and without a terminal, where colours and cursor moves
from one host would act on the other hosts' lines; raw bytes are what `ssh` is for). The health
gate shows an app's answer through it too. JSON output needs nothing: json.dumps escapes them.
"""

from __future__ import annotations

import re

__all__ = ["safe_line", "safe_text"]

# C0 controls but tab, DEL and C1 controls (0x9b is a one-byte CSI on some terminals), and the
# format characters that reorder or break what is shown: ALM, LRM/RLM, LS/PS, the embeddings,
# overrides and isolates.
_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def safe_line(text: str) -> str:
    """TEXT as one line to print: every control or reordering character, newlines and
    carriage returns included, shown as its escape; a single trailing CR (CRLF logs) dropped."""
    if text.endswith("\r"):
        text = text[:-1]
    return _UNSAFE.sub(_escape, text)


def safe_text(text: str) -> str:
    """TEXT of several lines to print: each line as safe_line() makes it, newlines kept."""
    return "\n".join(safe_line(line) for line in text.split("\n"))
