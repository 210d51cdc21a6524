"""Host text made safe for the operator's terminal (ai_deploy.host.safetext): every sequence
that would act on the terminal is shown as its escape, and ordinary text, UTF-8 included, is
left exactly as it was."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import pytest

from ai_deploy.commands.hostlines import HostLines
from ai_deploy.host.safetext import safe_line, safe_text

pytestmark = pytest.mark.unit

# Anything a terminal acts on: C0 but tab, DEL, C1, bidirectional controls, line separators.
ACTIVE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]52;c;cm0gLXJmIH4=\x07", "\\x1b]52;c;cm0gLXJmIH4=\\x07"),  # OSC 52: clipboard
        ("ok\x1b[1A\x1b[2Kall fine", "ok\\x1b[1A\\x1b[2Kall fine"),  # up a line, erase it
        ("secret\rall fine", "secret\\rall fine"),  # carriage return overwrites
        ("\x9b2J", "\\x9b2J"),  # one-byte CSI: clear the screen
        ("\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\", None),  # OSC 8 hyperlink
        ("txt\u202egnp.exe", "txt\\u202egnp.exe"),  # right-to-left override
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
        ("nul\x00bel\x07del\x7f", "nul\\x00bel\\x07del\\x7f"),
        ("two\nlines", "two\\nlines"),
    ],
)
def test_sequences_that_act_on_a_terminal_are_shown_as_escapes(text: str, shown: str) -> None:
    line = safe_line(text)
    assert ACTIVE.search(line) is None
    if shown is not None:
        assert line == shown


@pytest.mark.parametrize(
    "text",
    [
        'INFO:     127.0.0.1:50312 - "GET /health HTTP/1.1" 200 OK',
        "col1\tcol2\ttabs are kept",
        "모델 로드 완료 (3.2 s) \u2014 caf\u00e9 \U0001f680",
        "",
    ],
)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert safe_line(text) == text
    assert safe_text(f"{text}\n{text}") == f"{text}\n{text}"


def test_a_crlf_line_loses_its_cr_and_several_lines_keep_their_newlines() -> None:
    assert safe_line("from a windows box\r") == "from a windows box"
    assert safe_text("a\x1b[31m\nb\r\nc") == "a\\x1b[31m\nb\nc"


def test_host_lines_print_every_line_made_safe() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        HostLines(["h1", "host-2"]).out("h1", "\x1b]52;c;Zm9v\x07hi")
        HostLines(["h1"], prefix=False).out("h1", "\x1b[2K\rraw")
    assert out.getvalue() == "h1     | \\x1b]52;c;Zm9v\\x07hi\n\\x1b[2K\\rraw\n"


def test_lock_status_prints_the_holder_the_host_wrote_inert(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock's holder is whatever the host's lock file says: `lock status` shows it inert."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from ai_deploy.commands import lock as lock_command
    from ai_deploy.host import facts
    from ai_deploy.host.facts import AppTree

    holder = {"who": "mallory\x1b]52;c;Zm9v\x07", "action": "deploy\x1b[2K\r", "pid": 1}
    host = SimpleNamespace(name="h1")
    monkeypatch.setattr(lock_command, "connected", lambda _inventory: nullcontext([host]))
    monkeypatch.setattr(lock_command, "layout_of", lambda _h: None)
    # lock_command imports read_tree when it runs (pyinfra stays out of the parser's imports).
    monkeypatch.setattr(facts, "read_tree", lambda _h, _layout: AppTree(lock=holder))
    assert lock_command.lock_command(None, "status") == 0
    out = capsys.readouterr().out
    assert all(ACTIVE.search(line) is None for line in out.split("\n")), out
    assert "held by mallory\\x1b]52;c;Zm9v\\x07 (deploy\\x1b[2K\\r of None" in out
