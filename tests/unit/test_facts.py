"""The app tree fact (ai_deploy.host.facts): tree_script run on real temporary trees, and
parse_tree on the lines it prints."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.facts import MARK, AppTree, AppTreeFact, parse_tree, read_tree
from ai_deploy.host.paths import VENV_COMPLETE, Layout

pytestmark = pytest.mark.unit

UNITS = [
    "ai-server.service",
    "ai-server.socket",
    "ai-server@blue.service",
    "ai-server@green.service",
    "nginx.service",
]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


def set_unit(host: FakeHost, unit: str, active: str) -> None:
    d = host.state / "units" / unit
    d.mkdir(parents=True, exist_ok=True)
    (d / "active").write_text(active + "\n")


def release(root: Path, rid: str, venv: str | None, age_s: float) -> None:
    d = root / "releases" / rid
    d.mkdir(parents=True)
    if venv:
        (d / ".venv").symlink_to(f"../../venvs/{venv}")
    when = time.time() - age_s
    os.utime(d, (when, when))


def test_tree_of_a_fresh_host_is_empty(host: FakeHost) -> None:
    tree = host.tree()
    assert tree == AppTree(units=dict.fromkeys(UNITS, "inactive"))
    assert not host.app_root.exists()  # reading changed nothing


def test_tree_script_reads_a_real_tree(host: FakeHost) -> None:
    root = host.app_root
    release(root, "r1", "v-old", age_s=300)
    release(root, "r2", "v-new", age_s=200)
    release(root, "r3", None, age_s=100)  # extracted, its venv never linked
    (root / "releases" / ".tmp-r4-abcdef").mkdir()  # an extraction under way: not a release
    (root / "venvs" / "v-new").mkdir(parents=True)
    (root / "venvs" / "v-new" / VENV_COMPLETE).touch()
    (root / "venvs" / "v-old").mkdir()  # a sync that never finished: not a venv
    (root / "current").symlink_to("releases/r2")
    (root / "previous").symlink_to("releases/r1")
    holder = {"who": "alice@ci", "pid": 7, "token": "ab" * 8}
    (root / ".deploy.lock").mkdir()
    (root / ".deploy.lock" / "info").write_text(json.dumps(holder) + "\n")
    (root / "colors").mkdir()
    (root / "colors" / "LIVE").write_text("green\n")
    host.etc(host.layout.nginx_site_available).write_text("# site\n")
    host.etc(host.layout.nginx_site).symlink_to("../sites-available/ai-server")
    set_unit(host, "ai-server@green.service", "active")
    set_unit(host, "nginx.service", "active")
    set_unit(host, "ai-server@blue.service", "failed")

    tree = host.tree()
    assert tree == AppTree(
        current="r2",
        previous="r1",
        releases=["r3", "r2", "r1"],
        venvs=["v-new"],
        release_venvs={"r2": "v-new", "r1": "v-old"},
        lock=holder,
        units={
            **dict.fromkeys(UNITS, "inactive"),
            "ai-server@green.service": "active",
            "nginx.service": "active",
            "ai-server@blue.service": "failed",
        },
        live="green",
        nginx_site=True,
    )
    assert tree.venv_ready("r2") and not tree.venv_ready("r1") and not tree.venv_ready("r3")
    assert tree.active_units() == {"ai-server@green.service", "nginx.service"}


def test_tree_with_an_unreadable_lock_keeps_its_text(host: FakeHost) -> None:
    lock = host.app_root / ".deploy.lock"
    lock.mkdir(parents=True)
    (lock / "info").write_text('{"who": "alice@ci", "pid":')
    tree = host.tree()
    assert tree.lock is None
    assert tree.lock_raw == '{"who": "alice@ci", "pid":'


def test_tree_of_a_deployed_host(host: FakeHost) -> None:
    host.deploy("r1")
    host.deploy("r2")
    tree = host.tree()
    assert (tree.current, tree.previous, tree.releases) == ("r2", "r1", ["r2", "r1"])
    assert tree.venv_ready("r2") and tree.venv_ready("r1") and len(tree.venvs) == 1
    assert tree.lock is None and tree.lock_raw is None
    assert tree.active_units() == {"ai-server.service", "ai-server.socket"}


def test_tree_script_quotes_an_app_root_with_spaces_and_quotes(host: FakeHost) -> None:
    root = host.tmp / "my app's $(root)"
    release(root, "r1", None, age_s=10)
    (root / "current").symlink_to("releases/r1")
    tree = read_tree(host.remote, Layout(str(root), "ai-server", str(host.log_dir)))
    assert (tree.current, tree.releases) == ("r1", ["r1"])


def test_parse_tree_reads_every_kind_of_line_and_skips_the_rest() -> None:
    lines = [
        "current r2",
        "previous ",
        "release r2 v1",
        "release r1",
        "release",
        "venv v1",
        'lock {"who": "x"}',
        "unit ai-server.service active",
        "unit ai-server.socket",
        "live blue",
        "nginx_site yes",
        "something new in a later version",
        "",
    ]
    assert parse_tree(lines) == AppTree(
        current="r2",
        previous=None,
        releases=["r2", "r1"],
        venvs=["v1"],
        release_venvs={"r2": "v1"},
        lock={"who": "x"},
        units={"ai-server.service": "active", "ai-server.socket": "unknown"},
        live="blue",
        nginx_site=True,
    )


def test_fact_reads_only_after_its_mark() -> None:
    # A login banner or sudo's lecture may come first on a real host.
    tree = AppTreeFact().process(["current banner-junk", MARK, "current r1", "live green"])
    assert (tree.current, tree.live) == ("r1", "green")
