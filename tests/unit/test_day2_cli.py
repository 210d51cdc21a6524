"""The day-2 verbs' wiring and their host scripts: arguments as argparse reads them (every
host-reaching verb marked day2), --version, output into a closed pipe, and the log and release
scripts run by a real shell on a temporary directory laid out as a host's."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from ai_deploy.cli import build_parser
from ai_deploy.commands import logs, releases
from ai_deploy.commands.exec import exec_script, strip_separator
from ai_deploy.host.paths import Layout
from ai_deploy.host.revisions import parse_revisions, revisions_script

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def sh(script: str) -> list[str]:
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


# --- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["logs", "-f", "--lines", "5", "--since", "10m", "--grep", "ERROR", "--error"],
        ["releases", "--json"],
        ["audit", "--lines", "3"],
        ["exec", "--", "python", "-c", "import fastapi"],
        ["status", "--json"],
    ],
)
def test_every_host_reaching_verb_is_day2_and_takes_an_inventory(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv[:1], "-i", "inv.py", *argv[1:]])
    assert args.day2 is True
    assert args.inventory == "inv.py"


@pytest.mark.parametrize("argv", [["rollback", "R1"], ["restart"]])
def test_rollback_and_restart_take_the_targets_of_a_deploy(argv: list[str]) -> None:
    """They open access themselves, through the deploy's engine: never re-run as a child."""
    given = [*argv, "-i", "inv.py", "--host", "10.0.0.5", "--no-gcp"]
    args = build_parser().parse_args(given)
    assert getattr(args, "day2", False) is False
    assert (args.inventory, args.host, args.no_gcp) == ("inv.py", "10.0.0.5", True)


def test_logs_arguments() -> None:
    args = build_parser().parse_args(["logs", "-f", "-n", "7", "--since", "1h", "--error"])
    assert (args.follow, args.lines, args.since, args.error, args.grep) == (
        True,
        7,
        "1h",
        True,
        None,
    )
    plain = build_parser().parse_args(["logs"])
    assert (plain.follow, plain.lines, plain.error) == (False, None, False)


def test_negative_line_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["logs", "--lines", "-3"])
    assert stopped.value.code == 2
    assert "negative" in capsys.readouterr().err


def test_exec_keeps_the_command_and_its_own_options_whole() -> None:
    args = build_parser().parse_args(["exec", "-i", "x.py", "--", "python", "-i", "-c", "1"])
    assert strip_separator(args.cmd) == ["python", "-i", "-c", "1"]
    assert args.inventory == "x.py"
    assert strip_separator(["python", "-V"]) == ["python", "-V"]


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"ai-deploy {version('ai-deploy')}"


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`ai-deploy config | head -0`: the reader is gone before the first write."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ai_deploy.cli", "config"],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


# --- host scripts ---------------------------------------------------------------------------


def test_exec_script_quotes_the_command_and_runs_it_as_the_service_user() -> None:
    script = exec_script(
        Layout("/app/ai-server", "ai-server", "/var/log/x"),
        "svc",
        "grp",
        ["python", "-c", "print('a b'); import os"],
        {"HOME": "/app/ai-server/cache", "X": "a 'b'"},
    )
    assert "--uid=svc --gid=grp" in script
    assert """-E HOME=/app/ai-server/cache -E 'X=a '"'"'b'"'"''""" in script
    assert "EnvironmentFile=-/app/ai-server/.env" in script
    assert 'VIRTUAL_ENV="$d/.venv"' in script
    assert script.rstrip().endswith("""sh python -c 'print('"'"'a b'"'"'); import os'""")


def _layout(tmp_path: Path) -> Layout:
    (tmp_path / "log").mkdir(parents=True, exist_ok=True)
    return Layout(str(tmp_path / "app root"), "ai-server", str(tmp_path / "log"))


def test_log_read_names_the_file_and_where_a_follow_starts(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    log = tmp_path / "log" / "ai-server.log"
    log.write_text("".join(f"line {n}\n" for n in range(10)))
    read = logs.parse_read(sh(logs.read_script(layout, error=False, scan=3)))
    assert read.path == str(log)
    assert read.size == log.stat().st_size
    assert read.lines == ["line 7", "line 8", "line 9"]
    assert logs.follow_script(read) == f"tail -c +{log.stat().st_size + 1} -F -- {log}"
    # The follow starts with the first byte the read did not show.
    with log.open("a") as f:
        f.write("line 10\n")
    shown = sh(logs.follow_script(read).replace(" -F ", " "))
    assert shown == ["line 10"]


def test_log_read_of_the_error_log_and_of_a_missing_log(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    (tmp_path / "log" / "ai-server-error.log").write_text("boom\n")
    read = logs.parse_read(sh(logs.read_script(layout, error=True, scan=50)))
    assert (read.path.endswith("ai-server-error.log"), read.lines) == (True, ["boom"])
    missing = logs.parse_read(
        sh(logs.read_script(_layout(tmp_path / "other"), error=False, scan=5))
    )
    assert (missing.size, missing.lines) == (None, [])
    assert logs.follow_script(missing).startswith("tail -c +1 -F -- ")


def test_release_listing_script_on_a_tree(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    root = Path(layout.app_root)
    for rid, mtime in (("old1", 1_700_000_000), ("new1", 1_700_000_100)):
        (root / "releases" / rid).mkdir(parents=True)
        (root / "releases" / rid / "main.py").write_text("x" * 5000)
        os.utime(root / "releases" / rid, (mtime, mtime))
    (root / "releases" / ".tmp-partial").mkdir()
    (root / "healthy").mkdir()
    (root / "healthy" / "new1").write_text("- now\n")
    (root / "current").symlink_to(root / "releases" / "new1")
    (root / "previous").symlink_to(root / "releases" / "old1")
    current, previous, kept = releases.parse_list(sh(releases.list_script(layout)))
    assert (current, previous) == ("new1", "old1")
    assert [(k.release, k.mtime, k.healthy) for k in kept] == [
        ("new1", 1_700_000_100, True),
        ("old1", 1_700_000_000, False),
    ]
    assert all(k.size_kb >= 4 for k in kept)
    assert releases.parse_list(sh(releases.list_script(_layout(tmp_path / "empty")))) == (
        None,
        None,
        [],
    )


def test_revisions_script_tails_the_log(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    Path(layout.app_root).mkdir()
    lines = [f"2026-11-29T22:0{n}:00Z deploy r{n} ok by=a@b" for n in range(5)]
    Path(layout.app_root, "revisions.log").write_text("\n".join(lines) + "\n")
    assert parse_revisions(sh(revisions_script(layout, 2)))[0].release == "r3"
    assert len(sh(revisions_script(layout))) == 5
    assert sh(revisions_script(_layout(tmp_path / "none"))) == []


def test_host_commands_print_no_gevent_warning(tmp_path: Path) -> None:
    """pyinfra's CLI patches with gevent after ssl is loaded; the warning about it is not
    shown to users (here: status of a host whose port is closed, on loopback)."""
    inventory = tmp_path / "one.py"
    inventory.write_text('hosts = [("127.0.0.1", {"ssh_port": 1, "ssh_connect_retries": 0})]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "ai_deploy.cli", "status", "-i", str(inventory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("GCP_", "AI_DEPLOY_"))},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "UNREACHABLE" in proc.stdout
    assert "MonkeyPatchWarning" not in proc.stderr
