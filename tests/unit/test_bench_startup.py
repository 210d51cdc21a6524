"""bench.startup: what every benchmark does before it boots hosts."""

from __future__ import annotations

import os
import signal

import pytest

from bench import startup

pytestmark = pytest.mark.unit


def test_sigterm_becomes_keyboardinterrupt_and_ci_variables_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("GCP_INSTANCE", "vm-1")
    monkeypatch.setenv("GITHUB_RUN_ID", "7")
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert startup.start("hosts", drop_ci_env=True)
        assert "GCP_INSTANCE" not in os.environ and "GITHUB_RUN_ID" not in os.environ
        with pytest.raises(KeyboardInterrupt):
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_not_root_is_refused_naming_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert startup.start("a sandbox host") is False
    assert "boots a sandbox host: run it as root" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raised", "rc", "note"),
    [(None, 0, None), (KeyboardInterrupt(), 130, "interrupted"), (OSError("disk"), 1, "disk")],
)
def test_the_hosts_go_on_every_exit_of_a_run(
    raised: BaseException | None, rc: int, note: str | None
) -> None:
    downs: list[str] = []
    logged: list[str] = []

    def body() -> None:
        if raised is not None:
            raise raised

    got_rc, notes = startup.run_guarded(body, lambda: downs.append("down"), logged.append)
    assert got_rc == rc and downs == ["down"]
    assert (notes == []) if note is None else (note in notes[0])
    assert bool(logged) == (rc == 1)  # an error is logged with its traceback
