"""The service's cache directory as data and as shell: the variables it gets, the directories
it may be (hostile settings refused), the unit lines, and the measuring and clearing scripts run
by a real shell on a temporary tree (links in the cache never followed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from hostkit import FakeHost

from ai_deploy.cli import build_parser
from ai_deploy.commands.cache import clear_lines
from ai_deploy.commands.status import cache_line
from ai_deploy.host.cache import (
    CacheState,
    cache_environment,
    cache_problems,
    clear_script,
    parse_cleared,
    parse_state,
    state_script,
    unit_environment,
)
from ai_deploy.host.paths import Layout

pytestmark = pytest.mark.unit
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
LAYOUT = Layout("/app/ai-server", "ai-server", "/var/log/dojangkok")
DATA_DIRS = ["chroma_db"]


def sh(script: str) -> list[str]:
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


# --- settings -------------------------------------------------------------------------------


def test_the_cache_is_under_app_root_unless_a_setting_moves_it() -> None:
    assert LAYOUT.cache_dir == "/app/ai-server/cache"
    assert Layout("/app/x/", "x", "/l").cache_dir == "/app/x/cache"
    data = {"app_root": "/app/a", "app_name": "a", "app_log_dir": "/l", "app_cache_dir": None}
    assert Layout.from_data(data).cache_dir == "/app/a/cache"
    moved = Layout.from_data(SimpleNamespace(**{**data, "app_cache_dir": "/var/cache/a"}))
    assert (moved.cache_dir, moved.cache) == ("/var/cache/a", "/var/cache/a")


def test_every_library_variable_points_into_the_cache_and_settings_add_or_override() -> None:
    env = cache_environment(LAYOUT)
    assert env["HOME"] == "/app/ai-server/cache"
    assert env["XDG_CACHE_HOME"] == "/app/ai-server/cache/.cache"
    assert env["HF_HOME"] == "/app/ai-server/cache/.cache/huggingface"
    assert env["TRITON_CACHE_DIR"] == "/app/ai-server/cache/.triton/cache"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/app/ai-server/cache/.cache/torchinductor"
    assert env["VLLM_CACHE_ROOT"] == "/app/ai-server/cache/.cache/vllm"
    assert all(v.startswith("/app/ai-server/cache") for v in env.values())
    extra = {"HF_HOME": "{cache_dir}/hf", "HF_HUB_OFFLINE": 1, "X": True}
    env = cache_environment(LAYOUT, extra)
    assert env["HF_HOME"] == "/app/ai-server/cache/hf"
    assert (env["HF_HUB_OFFLINE"], env["X"]) == ("1", "true")


def test_unit_lines_quote_what_systemd_would_read_otherwise() -> None:
    lines = unit_environment({"A": "plain", "B": 'sp ace "q" \\n %i'})
    assert lines == ['"A=plain"', '"B=sp ace \\"q\\" \\\\n %%i"']


@pytest.mark.parametrize("template", ["ai-server.service.j2", "ai-server@.service.j2"])
def test_every_unit_gets_the_variables_and_may_write_the_cache(template: str) -> None:
    values = {
        "app_root": "/app/ai-server",
        "app_name": "ai-server",
        "read_write_paths": ["/app/ai-server/chroma_db", "/var/log/x", LAYOUT.cache_dir],
        "environment": unit_environment(cache_environment(LAYOUT)),
        "gpu_devices": [],
        "port": 8000,
        "socket": template == "ai-server.service.j2",
    }
    text = jinja2.Template((TEMPLATES / template).read_text()).render(**values)
    service = text.split("[Service]", 1)[1]
    assert 'Environment="HOME=/app/ai-server/cache"\n' in service
    assert 'Environment="TRITON_CACHE_DIR=/app/ai-server/cache/.triton/cache"\n' in service
    assert "ReadWritePaths=/app/ai-server/chroma_db /var/log/x /app/ai-server/cache\n" in service
    # The .env is read after the variables, so it wins (systemd: files over Environment=).
    assert service.index("EnvironmentFile=") < service.index('Environment="HOME=')


@pytest.mark.parametrize(
    ("cache_dir", "why"),
    [
        ("/", "not a plain absolute path"),
        ("cache", "not a plain absolute path"),
        ("/app/ai-server/x/../releases", "not a plain absolute path"),
        ("/app/ai-server/cache/", "not a plain absolute path"),
        ("/app/ai server/cache", "not a plain absolute path"),
        ("/app/ai-server/ca\nche", "not a plain absolute path"),
        ("/data", "system-wide"),
        ("/var/cache", "system-wide"),
        ("/etc/ai-server", "under /etc"),
        ("/usr/local/cache", "under /usr"),
        ("/tmp/cache", "under /tmp"),
        ("/var/tmp/cache", "under /var/tmp"),
        ("/home/ubuntu/.cache", "under /home"),
        ("/var/log/ai-server", "under /var/log"),
        ("/app/ai-server", "holds app_root"),
        ("/app", "system-wide"),
        ("/srv/apps", "holds app_root"),
        ("/app/ai-server/releases", "deploy's own 'releases'"),
        ("/app/ai-server/releases/abc/cache", "deploy's own 'releases'"),
        ("/app/ai-server/models/c", "deploy's own 'models'"),
        ("/app/ai-server/.deploy.lock", "deploy's own '.deploy.lock'"),
        ("/app/ai-server/chroma_db", "overlaps"),
        ("/app/ai-server/chroma_db/hf", "overlaps"),
        ("/srv/logs", "overlaps"),
    ],
)
def test_a_cache_dir_that_is_not_a_directory_of_its_own_is_refused(
    cache_dir: str, why: str
) -> None:
    root = "/srv/apps/ai-server" if cache_dir == "/srv/apps" else "/app/ai-server"
    log_dir = "/srv/logs/ai" if cache_dir == "/srv/logs" else "/var/log/dojangkok"
    problems = cache_problems(Layout(root, "ai-server", log_dir, cache_dir), DATA_DIRS)
    assert len(problems) == 1 and why in problems[0], problems
    assert problems[0].startswith("app_cache_dir: ") and "set app_cache_dir" in problems[0]


@pytest.mark.parametrize(
    "cache_dir",
    [None, "/var/cache/ai-server", "/data/ai-cache", "/app/ai-server/hf-cache", "/mnt/ssd/c"],
)
def test_a_directory_of_its_own_is_accepted(cache_dir: str | None) -> None:
    layout = Layout("/app/ai-server", "ai-server", "/var/log/dojangkok", cache_dir)
    assert cache_problems(layout, DATA_DIRS, {"HF_HOME": "{cache_dir}/hf"}) == []


def test_variables_that_a_unit_cannot_hold_are_refused() -> None:
    problems = cache_problems(LAYOUT, DATA_DIRS, {"1X": "a", "A-B": "b", "OK": "a\nb", "Z": "c"})
    assert len(problems) == 3, problems
    assert "'1X' is not a variable name" in problems[0]
    assert "'A-B' is not a variable name" in problems[1]
    assert "OK: the value may not hold a line break" in problems[2]


# --- host scripts on a temporary tree -------------------------------------------------------


def _tree(tmp_path: Path) -> tuple[Layout, Path, Path]:
    layout = Layout(str(tmp_path / "app"), "ai-server", str(tmp_path / "log"))
    cache = Path(layout.cache_dir)
    (cache / ".cache" / "huggingface" / "hub").mkdir(parents=True)
    (cache / ".cache" / "huggingface" / "hub" / "w.bin").write_bytes(b"w" * 50_000)
    (cache / ".triton" / "cache").mkdir(parents=True)
    (cache / ".triton" / "cache" / "k").write_bytes(b"k" * 9000)
    (cache / "top-file").write_text("t")
    (cache / "empty").mkdir()
    locked = cache / ".cache" / "read-only"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0o555)
    # What the service could plant: links to a directory and to a file outside the cache.
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "keep").write_text("keep")
    (cache / ".cache" / "dir-link").symlink_to(outside / "sub")
    (cache / "file-link").symlink_to(outside / "sub" / "keep")
    cache.chmod(0o700)
    return layout, cache, outside


def test_state_reads_size_owner_and_mode(tmp_path: Path) -> None:
    layout, cache, _ = _tree(tmp_path)
    state = parse_state(layout, sh(state_script(layout)))
    assert state.present and state.size_bytes >= 59_000 and state.mode == "700"
    assert state.path == str(cache)
    missing = Layout(str(tmp_path / "none"), "a", "/l")
    assert parse_state(missing, sh(state_script(missing))).present is False


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only directory in the cache needs root")
def test_clear_removes_everything_inside_and_never_what_links_point_to(tmp_path: Path) -> None:
    layout, cache, outside = _tree(tmp_path)
    cleared = parse_cleared(layout, sh(clear_script(layout)))
    assert list(cache.iterdir()) == []
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert (outside / "sub" / "keep").read_text() == "keep"
    removed = dict(cleared.removed)
    assert set(removed) == {
        ".cache/huggingface",
        ".cache/read-only",
        ".cache/dir-link",
        ".triton/cache",
        "top-file",
        "empty",
        "file-link",
    }
    assert cleared.removed[0][0] == ".cache/huggingface"  # largest first
    assert cleared.freed_bytes >= 59_000 and (cleared.left, cleared.errors) == (0, [])
    again = parse_cleared(layout, sh(clear_script(layout)))
    assert (again.present, again.removed, again.freed_bytes) == (True, [], 0)
    assert clear_lines(layout.cache_dir, again) == [
        f"{layout.cache_dir} was empty: nothing removed"
    ]


def test_clear_leaves_a_cache_that_is_a_link_or_missing_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("keep")
    (tmp_path / "app").mkdir()
    layout = Layout(str(tmp_path / "app"), "ai-server", "/l")
    Path(layout.cache_dir).symlink_to(target)
    assert parse_cleared(layout, sh(clear_script(layout))).present is False
    assert (target / "keep").read_text() == "keep"
    assert parse_state(layout, sh(state_script(layout))).present is False
    Path(layout.cache_dir).unlink()
    cleared = parse_cleared(layout, sh(clear_script(layout)))
    assert clear_lines(layout.cache_dir, cleared)[0].endswith("nothing removed")


def test_clear_report_lists_entries_with_sizes() -> None:
    out = [
        "ENTRY 70000 /c/.cache/hf",
        "ENTRY 74096 /c/.cache",
        "ENTRY 4096 /c/empty",
        "ENTRY 90000 /c",
        "LEFT 0",
        "AFTER 4096",
    ]
    cleared = parse_cleared(Layout("/a", "a", "/l", "/c"), out)
    assert cleared.removed == [(".cache/hf", 70000), ("empty", 4096)]
    assert cleared.freed_bytes == 85904
    assert clear_lines("/c", cleared) == [
        "cleared /c: removed 2 entries, 83.9 KiB freed",
        "  .cache/hf  68.4 KiB",
        "  empty      4.0 KiB",
    ]


def test_cache_clear_is_a_day2_verb_with_an_inventory() -> None:
    args = build_parser().parse_args(["cache", "clear", "-i", "inv.py"])
    assert (args.day2, args.inventory, args.cache_command) == (True, "inv.py", "clear")


def test_deploys_and_their_pruning_leave_the_cache_alone(tmp_path: Path) -> None:
    """releases_keep prunes releases, venvs and model files: never the cache, not even what in
    it looks like the deploy's own directories."""
    with FakeHost(tmp_path) as host:
        cache = Path(host.layout.cache_dir)
        planted = [".cache/huggingface/hub/w.bin", "releases/r1/main.py", "venvs/v/x", "models/m"]
        for rel in planted:
            (cache / rel).parent.mkdir(parents=True, exist_ok=True)
            (cache / rel).write_text(rel)
        for release in ("r1", "r2", "r3", "r4"):
            assert host.deploy(release, releases_keep=1).ok
        assert sorted(p.name for p in (host.app_root / "releases").iterdir()) == ["r3", "r4"]
        assert all((cache / rel).read_text() == rel for rel in planted)


def test_status_line_of_the_cache() -> None:
    state = CacheState("/app/ai-server/cache", True, 3 * 1024**3, "ai-server", "ai-server", "700")
    assert cache_line(state) == "/app/ai-server/cache, 3.0 GiB (ai-server:ai-server, mode 700)"
    absent = CacheState("/var/cache/x", False)
    assert cache_line(absent) == "/var/cache/x: not there yet (the next deploy makes it)"
