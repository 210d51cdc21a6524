"""End-to-end: the service's persistent cache directory on a sandbox host.

The example app, with a probe added, writes a marker at import into each place an AI library
keeps its cache (`~/.cache/x`, `$XDG_CACHE_HOME`, `~/.triton/cache`, `$TORCHINDUCTOR_CACHE_DIR`)
and reports on /cache-probe what it found there from the previous start. The module's tests
build on each other, in order: first start (nothing found, everything written; the directory
0700 and the service user's, closed to `nobody`), a restart and a new release (each finds what
the start before it wrote), a second deploy that changes nothing, `exec` with the same
environment, `status` with the size, the unit's security score, and `cache clear` (a link in
the cache never followed, a held lock respected, the next start finds nothing).
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ai_deploy.sandbox import hosts
from tests.e2e.conftest import Sandbox, boot
from tests.e2e.deploykit import (
    APP_ROOT,
    Artifact,
    assert_failed,
    assert_ok,
    build_variant,
    cli,
    grand_total,
    main_pid,
    read_host,
    revisions,
    run_deploy,
    serving_release,
)
from tests.e2e.deploykit import cli_ok as ok

pytestmark = pytest.mark.e2e
CACHE = f"{APP_ROOT}/cache"
PLACES = ("home_cache", "xdg", "triton", "inductor")
# An extra variable whose value needs quoting in a unit file (space, quote, backslash, %), and
# a library variable moved inside the cache with {cache_dir}.
EXTRA = {"CACHE_PROBE_EXTRA": 'a b "q" \\ %i 100%', "HF_HUB_CACHE": "{cache_dir}/hub"}
EXPECTED_ENV = {
    "HOME": CACHE,
    "XDG_CACHE_HOME": f"{CACHE}/.cache",
    "HF_HOME": f"{CACHE}/.cache/huggingface",
    "TORCH_HOME": f"{CACHE}/from-env",
    "TORCHINDUCTOR_CACHE_DIR": f"{CACHE}/.cache/torchinductor",
    "TRITON_CACHE_DIR": f"{CACHE}/.triton/cache",
    "VLLM_CACHE_ROOT": f"{CACHE}/.cache/vllm",
    "CACHE_PROBE_EXTRA": EXTRA["CACHE_PROBE_EXTRA"],
    "HF_HUB_CACHE": f"{CACHE}/hub",
}

PROBE = '''

_CACHE_STAMP = f"{os.getpid()} {RELEASE}"
_CACHE_PLACES = {
    "home_cache": lambda: Path.home() / ".cache" / "x",
    "xdg": lambda: Path(os.environ["XDG_CACHE_HOME"]),
    "triton": lambda: Path.home() / ".triton" / "cache",
    "inductor": lambda: Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]),
}
_CACHE_FOUND: dict[str, object] = {}
_CACHE_WROTE: dict[str, str] = {}
for _name, _where in _CACHE_PLACES.items():
    try:
        _marker = _where() / "cache-probe-marker"
        _CACHE_FOUND[_name] = _marker.read_text() if _marker.exists() else None
        _marker.parent.mkdir(parents=True, exist_ok=True)
        _marker.write_text(_CACHE_STAMP)
        _CACHE_WROTE[_name] = "ok"
    except (OSError, KeyError) as _exc:
        _CACHE_WROTE[_name] = repr(_exc)


@app.get("/cache-probe")
def cache_probe() -> dict[str, object]:
    """What this start found in each cache place, what it wrote, and its environment."""
    names = [n for n in os.environ.get("CACHE_PROBE_NAMES", "").split(",") if n]
    return {
        "stamp": _CACHE_STAMP,
        "found": _CACHE_FOUND,
        "wrote": _CACHE_WROTE,
        "home": str(Path.home()),
        "env": {n: os.environ.get(n) for n in names},
    }
'''
# The app's .env wins over the cache variables (TORCH_HOME here), for the service and exec.
ENV_FILE = f"CACHE_PROBE_NAMES={','.join(sorted(EXPECTED_ENV))}\nTORCH_HOME={CACHE}/from-env\n"


def add_probe(text: str) -> str:
    return text + PROBE


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A fresh host, in an inventory that gives it app_cache_env as host data: every run and
    command reads the same settings (a `--data` of one pyinfra run would not reach `exec`)."""
    started, inventory = boot("cache")
    try:
        listed = runpy.run_path(str(inventory))["sandbox"]
        with_env = [(name, {**data, "app_cache_env": EXTRA}) for name, data in listed]
        ours = tmp_path_factory.mktemp("cache-inventory") / "sandbox.py"
        ours.write_text(f"sandbox = {with_env!r}\n")
        yield Sandbox(started[0], ours)
    finally:
        hosts.down([h.name for h in started])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cache")
    (work / ".env").write_text(ENV_FILE)
    return work


@pytest.fixture(scope="module")
def first(workdir: Path) -> Artifact:
    return build_variant(workdir, "cache-a", patch_main=add_probe)


@pytest.fixture(scope="module")
def second(workdir: Path) -> Artifact:
    return build_variant(workdir, "cache-b", patch_main=add_probe)


def deploy(host: Sandbox, artifact: Artifact, workdir: Path) -> str:
    return assert_ok(run_deploy(host.inventory, artifact.data, f"env_file={workdir / '.env'}"))


def probe(host: Sandbox) -> dict[str, object]:
    reply = requests.get(f"http://{host.address}:8000/cache-probe", timeout=30)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def stat(host: Sandbox, path: str) -> str:
    return read_host(host, f"stat -c '%U %G %a' {shlex.quote(path)}", path).strip()


def test_a_cache_dir_that_is_not_its_own_stops_the_deploy_before_anything_changes(
    host: Sandbox, first: Artifact, workdir: Path
) -> None:
    """/etc would be chowned to the service user and emptied by `cache clear`: refused."""
    before = read_host(host, "stat -c '%U %G %a' /etc; ls -A /etc | wc -l", "/etc")
    out = assert_failed(
        run_deploy(host.inventory, first.data, f"env_file={workdir / '.env'}", "app_cache_dir=/etc")
    )
    assert "app_cache_dir: '/etc' is a system-wide directory" in out, out
    assert read_host(host, "stat -c '%U %G %a' /etc; ls -A /etc | wc -l", "/etc") == before
    # The host's own settings (the default cache dir): nothing there yet, nothing made.
    done = cli(host.inventory, "cache clear")
    assert done.returncode == 0, done
    assert "does not exist (the next deploy makes it): nothing removed" in done.stdout
    absent = read_host(host, f"ls -A {APP_ROOT} 2>&1 || true", "app root")
    assert absent.strip().endswith("No such file or directory"), absent


def test_first_start_writes_every_cache_place_into_a_private_directory(
    host: Sandbox, first: Artifact, workdir: Path
) -> None:
    deploy(host, first, workdir)
    seen = probe(host)
    assert seen["wrote"] == dict.fromkeys(PLACES, "ok"), seen
    assert seen["found"] == dict.fromkeys(PLACES), seen
    assert seen["home"] == CACHE
    assert seen["env"] == EXPECTED_ENV, seen
    assert stat(host, CACHE) == "ai-server ai-server 700"
    assert stat(host, f"{CACHE}/.triton/cache/cache-probe-marker").startswith("ai-server ")
    # Another unprivileged user cannot even list it.
    denied = read_host(
        host,
        f"setpriv --reuid=nobody --regid=nogroup --clear-groups ls {CACHE} 2>&1 || true",
        "the cache as nobody",
    )
    assert "Permission denied" in denied, denied


def test_a_restart_finds_what_the_first_start_wrote(host: Sandbox, first: Artifact) -> None:
    before = probe(host)
    ok(cli(host.inventory, "restart"))
    after = probe(host)
    assert after["stamp"] != before["stamp"]
    assert after["found"] == dict.fromkeys(PLACES, before["stamp"]), after
    assert after["wrote"] == dict.fromkeys(PLACES, "ok"), after


def test_a_second_deploy_with_the_same_input_changes_nothing(
    host: Sandbox, first: Artifact, workdir: Path
) -> None:
    pid = main_pid(host)
    out = deploy(host, first, workdir)
    assert grand_total(out).success == 0, out
    assert main_pid(host) == pid


def test_a_new_release_finds_what_the_last_one_wrote(
    host: Sandbox, second: Artifact, workdir: Path
) -> None:
    before = probe(host)
    deploy(host, second, workdir)
    assert serving_release(host.address) == second.release_id
    after = probe(host)
    assert after["found"] == dict.fromkeys(PLACES, before["stamp"]), after
    assert after["env"] == EXPECTED_ENV, after


def test_exec_has_the_same_home_and_variables_and_writes_the_cache(host: Sandbox) -> None:
    script = (
        "import json, os, pathlib; "
        "p = pathlib.Path.home() / '.cache' / 'from-exec'; p.write_text('x'); "
        f"print(json.dumps({{n: os.environ.get(n) for n in {sorted(EXPECTED_ENV)!r}}}))"
    )
    out = ok(cli(host.inventory, "exec", "--", "python", "-c", script))
    assert json.loads(out.strip().splitlines()[-1]) == EXPECTED_ENV
    assert stat(host, f"{CACHE}/.cache/from-exec").startswith("ai-server ai-server")


def test_status_shows_the_cache_and_its_size(host: Sandbox) -> None:
    text = ok(cli(host.inventory, "status"))
    line = next(x for x in text.splitlines() if x.strip().startswith("cache:"))
    assert re.search(rf"{CACHE}, \d+\.\d (KiB|MiB) \(ai-server:ai-server, mode 700\)", line)
    report = json.loads(ok(cli(host.inventory, "status", "--json")))[0]
    assert report["cache"]["present"] is True and report["cache"]["size_bytes"] > 0


def test_the_unit_still_scores_3_5_or_lower(host: Sandbox) -> None:
    out = read_host(host, "systemd-analyze security --no-pager ai-server.service", "exposure")
    score = float(re.findall(r"Overall exposure level for \S+: ([0-9.]+)", out)[0])
    assert score <= 3.5, out


def test_clear_leaves_the_cache_alone_while_a_deploy_holds_the_lock(host: Sandbox) -> None:
    info = {"who": "someone@elsewhere", "deployer": "elsewhere", "pid": 1, "action": "deploy"}
    read_host(
        host,
        f"mkdir {APP_ROOT}/.deploy.lock && printf '%s\\n' {shlex.quote(json.dumps(info))} "
        f"> {APP_ROOT}/.deploy.lock/info && touch {APP_ROOT}/.deploy.lock/lease",
        "a lock held by another deploy",
    )
    try:
        done = cli(host.inventory, "cache clear")
        assert done.returncode == 1, done
        assert "someone@elsewhere" in done.stderr, done.stderr
        assert stat(host, f"{CACHE}/.cache/from-exec").startswith("ai-server")
    finally:
        read_host(host, f"rm -rf {APP_ROOT}/.deploy.lock", "the lock removed")


def test_clear_empties_the_cache_without_following_links(host: Sandbox) -> None:
    # Links the service could plant: to a directory and to a file outside the cache.
    read_host(
        host,
        f"mkdir -p {APP_ROOT}/outside && echo keep > {APP_ROOT}/outside/file\n"
        f"ln -s {APP_ROOT}/outside {CACHE}/.cache/dir-link\n"
        f"ln -s {APP_ROOT}/outside/file {CACHE}/file-link",
        "links in the cache",
    )
    done = cli(host.inventory, "cache clear")
    out = ok(done)
    assert f"cleared {CACHE}: removed" in out, out
    for entry in (".cache/x", ".triton/cache", ".cache/torchinductor", "file-link"):
        assert re.search(rf"\|\s+{re.escape(entry)}\s+\d", out), (entry, out)
    assert read_host(host, f"ls -A {CACHE}", "the cache after clear").strip() == ""
    assert stat(host, CACHE) == "ai-server ai-server 700"
    assert read_host(host, f"cat {APP_ROOT}/outside/file", "outside").strip() == "keep"
    line = revisions(host)[-1].split()
    assert line[1:4] == ["cache-clear", "-", "ok"], line
    # The next start finds an empty cache, and fills it again.
    ok(cli(host.inventory, "restart"))
    seen = probe(host)
    assert seen["found"] == dict.fromkeys(PLACES), seen
    assert seen["wrote"] == dict.fromkeys(PLACES, "ok"), seen
    again = ok(cli(host.inventory, "cache clear"))
    assert f"cleared {CACHE}" in again
