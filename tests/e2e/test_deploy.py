"""The deploy, end to end: `pyinfra INVENTORY deploy.py` against real systemd sandbox hosts
(issue 3's acceptance lines, each test names the one it shows).

Most scenarios chain on one module-scoped host (a deploy there takes seconds); each test first
puts the release it starts from in service, so it does not depend on what ran before it. Tests
that need a pristine VM get a fresh host of their own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    Artifact,
    assert_failed,
    assert_ok,
    build_variant,
    example_artifact,
    example_members,
    file_member,
    grand_total,
    health,
    host_snapshot,
    infra_host,
    link_member,
    main_pid,
    predict_traffic,
    relock_on_host,
    revisions,
    run_deploy,
    serving_release,
    start_deploy,
    tree,
    write_tar,
)

pytestmark = pytest.mark.e2e


# --- shared set-up --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def base(workdir: Path) -> Artifact:
    """The example app as its CI builds it."""
    return example_artifact(workdir)


@pytest.fixture(scope="module")
def first_deploy(sandbox: Sandbox, base: Artifact) -> str:
    """The module host after its first deploy (a fresh VM until then); returns the output."""
    before = tree(sandbox)
    assert before == [], f"the module host is not fresh: {before}"
    return assert_ok(run_deploy(sandbox.inventory, base.data))


def serve(sandbox: Sandbox, artifact: Artifact, *data: str) -> str:
    """Put ARTIFACT in service (a no-op when it serves already); returns pyinfra's output."""
    out = assert_ok(run_deploy(sandbox.inventory, artifact.data, *data))
    assert serving_release(sandbox.address) == artifact.release_id
    return out


def slow_python(sandbox: Sandbox, name: str, seconds: float) -> str:
    """Install an interpreter for `--data uv_python=` that sleeps SECONDS on every start.

    It stands in for a slow dependency install: uv runs it to inspect the interpreter and to
    compile bytecode, so `uv sync` takes that much longer, and nothing else changes."""
    path = f"/usr/local/bin/{name}"
    sandbox.sudo(
        f"printf '#!/bin/sh\\nsleep {seconds}\\nexec /usr/bin/python3 \"$@\"\\n' > {path} "
        f"&& chmod 755 {path}"
    )
    return path


def lock_hash(artifact_dir: Path) -> str:
    return hashlib.sha256((artifact_dir / "uv.lock").read_bytes()).hexdigest()


def slow_start(seconds: float) -> Callable[[str], str]:
    """A main.py patch: the model takes SECONDS to load whatever .env says."""

    def patch(text: str) -> str:
        line = 'MODEL_LOAD_SECONDS = float(os.environ.get("MODEL_LOAD_SECONDS", "2"))'
        return text.replace(line, f"MODEL_LOAD_SECONDS = {seconds}")

    return patch


# --- acceptance: fresh host -> deploy -> healthy, state asserted ----------------------------


def test_fresh_host_deploy_serves_and_host_state_is_right(
    sandbox: Sandbox, base: Artifact, first_deploy: str, tmp_path: Path
) -> None:
    """Acceptance: fresh host -> deploy -> /health 200 from the machine; unit active and
    enabled, `current` points at the release, code not writable by the service user, .env 0600
    owned by it, logs in /var/log/ai-server (derived from app_name), no data directory."""
    assert "building venv" in first_deploy
    reply = health(sandbox.address)
    assert reply.status_code == 200
    assert reply.json()["release"] == base.release_id

    host = infra_host(sandbox, tmp_path)
    try:
        service = host.service("ai-server")
        assert service.is_running
        # The default strategy (socket): the socket owns the port and is what starts at boot.
        socket = host.service("ai-server.socket")
        assert socket.is_running and socket.is_enabled
        release_dir = f"{APP_ROOT}/releases/{base.release_id}"
        current = host.file(f"{APP_ROOT}/current")
        assert current.is_symlink
        assert current.linked_to == release_dir
        assert host.file(f"{release_dir}/REVISION").content_string.strip() == base.release_id

        # Code and venvs: owned by root, nothing in them writable by the service user.
        for path in (f"{release_dir}/main.py", release_dir, f"{APP_ROOT}/venvs"):
            f = host.file(path)
            assert (f.user, f.group) == ("root", "root"), path
            assert not f.mode & 0o022, f"{path} is group/other writable: {oct(f.mode)}"
        not_root = host.check_output(
            f"find {APP_ROOT}/releases {APP_ROOT}/venvs ! -user root -o ! -group root"
        )
        assert not_root == ""
        writable = host.check_output(
            f"sudo -u ai-server find -L {APP_ROOT}/current {APP_ROOT}/venvs -writable 2>/dev/null"
            " || true"
        )
        assert writable == ""
        touch = host.run(f"sudo -u ai-server touch {APP_ROOT}/current/x")
        assert touch.rc != 0
        assert not host.file(f"{APP_ROOT}/current/x").exists
        assert host.run(f"sudo -u ai-server sh -c 'echo x >> {APP_ROOT}/current/main.py'").rc != 0
        assert host.run(f"sudo -u ai-server touch {APP_ROOT}/current/.venv/bin/x").rc != 0

        env = host.file(f"{APP_ROOT}/.env")
        assert env.mode == 0o600
        assert (env.user, env.group) == ("ai-server", "ai-server")
        # app_data_dirs is empty unless the settings name one.
        assert host.check_output(f"ls -A {APP_ROOT} | grep -v '^[.]' | sort").split() == [
            "cache",
            "current",
            "healthy",
            "last-start.json",
            "releases",
            "revisions.log",
            "venvs",
        ]

        unit = host.file("/etc/systemd/system/ai-server.service")
        assert unit.contains(f"WorkingDirectory={APP_ROOT}/current")
        assert unit.contains("User=ai-server")
        assert host.process.get(pid=int(main_pid(sandbox))).user == "ai-server"

        log = host.file("/var/log/ai-server/ai-server.log")
        error_log = host.file("/var/log/ai-server/ai-server-error.log")
        assert log.is_file and error_log.is_file
        # uvicorn logs to stderr: the model-loaded line lands in the error log.
        assert error_log.contains(f"release {base.release_id} ready")
        # logrotate itself (dry run) says it would rotate both logs.
        plan = host.run("logrotate -d /etc/logrotate.d/ai-server 2>&1").stdout
        for log in ("ai-server.log", "ai-server-error.log"):
            assert f"considering log /var/log/ai-server/{log}" in plan, plan
        assert host.check_output("/usr/local/bin/uv --version").startswith("uv 0.13.9")
    finally:
        host.backend.client.close()
    assert revisions(sandbox)[-1].split()[1:4] == ["deploy", base.release_id, "ok"]


# --- acceptance: the same artifact again changes nothing ------------------------------------


def test_same_artifact_again_changes_nothing(
    sandbox: Sandbox, base: Artifact, first_deploy: str
) -> None:
    """Acceptance: same artifact again: pyinfra reports no changes, MainPID unchanged, uv not
    run."""
    serve(sandbox, base)
    before = host_snapshot(sandbox)
    out = assert_ok(run_deploy(sandbox.inventory, base.data))
    totals = grand_total(out)
    assert (totals.success, totals.error) == (0, 0), out
    assert totals.no_change > 0
    assert "building venv" not in out and "uv sync" not in out
    # Nothing on the host moved: tree with mtimes (so the venvs too), unit, uv, the process.
    assert host_snapshot(sandbox) == before
    assert serving_release(sandbox.address) == base.release_id


# --- acceptance: new artifact, same uv.lock -------------------------------------------------


def test_new_artifact_same_lock_reuses_the_venv(
    sandbox: Sandbox, base: Artifact, first_deploy: str, workdir: Path
) -> None:
    """Acceptance: new artifact, same uv.lock: no new venv (venvs unchanged), new release
    serves."""
    serve(sandbox, base)
    new = build_variant(workdir, "same-lock")
    assert new.release_id != base.release_id
    venvs_before = tree(sandbox, f"{APP_ROOT}/venvs")
    assert venvs_before
    out = assert_ok(run_deploy(sandbox.inventory, new.data))
    assert "no sync" in out
    assert "building venv" not in out
    assert tree(sandbox, f"{APP_ROOT}/venvs") == venvs_before
    assert serving_release(sandbox.address) == new.release_id
    link = sandbox.sudo(f"readlink {APP_ROOT}/releases/{new.release_id}/.venv").strip()
    assert link == sandbox.sudo(f"readlink {APP_ROOT}/releases/{base.release_id}/.venv").strip()


# --- acceptance: new artifact, changed uv.lock ----------------------------------------------


def test_changed_lock_builds_a_venv_while_the_old_release_serves(
    sandbox: Sandbox, base: Artifact, first_deploy: str, workdir: Path
) -> None:
    """Acceptance: new artifact, changed uv.lock: a new venv is built while the old release
    keeps serving (requests to /predict during the sync all succeed), then the switch."""
    serve(sandbox, base)
    new = build_variant(workdir, "six", relock=relock_on_host(sandbox, "six"))
    new_hash = lock_hash(workdir / "six")
    venvs_before = sandbox.sudo(f"ls -1 {APP_ROOT}/venvs").split()
    assert new_hash not in venvs_before

    # How "during the sync" is pinned down: the gate prints "building venv" before it starts
    # `uv sync`, and "venv ... built" after the sync finished and before it switches `current`
    # (then it prints "current -> ..." and restarts). Each output line is timestamped when this
    # process reads it; a probe that started after the first line was read and ended before the
    # second was read ran wholly inside the sync, while the old release must serve. The restart
    # after the switch may drop requests with the default (stop, then start) strategy, so
    # probes overlapping it are not judged here. The sync is stretched to several seconds with
    # an interpreter that starts slowly, so the window holds dozens of probes, not a handful.
    python = slow_python(sandbox, "python3-slow-sync", 3)
    with predict_traffic(sandbox.address) as probes:
        time.sleep(0.5)
        run = start_deploy(sandbox.inventory, new.data, f"uv_python={python}")
        code = run.wait()
        time.sleep(0.3)
    out = run.output
    assert code == 0, out
    building = run.first(f"building venv {new_hash[:12]}")
    built = run.first(f"venv {new_hash[:12]} built in")
    switched = run.first(f"current -> releases/{new.release_id}")
    assert building and built and switched, out
    assert building < built <= switched

    during = [p for p in probes if p.started >= building and p.ended <= built]
    failed = [p for p in during if not p.ok or p.release != base.release_id]
    assert len(during) >= 10, f"only {len(during)} probes during the sync"
    assert not failed, failed[:5]
    # The old release also answered every probe before the sync began.
    assert all(p.ok for p in probes if p.ended <= building)

    assert serving_release(sandbox.address) == new.release_id
    assert sandbox.sudo(f"test -e {APP_ROOT}/venvs/{new_hash}/.ai-deploy-complete && echo ok")
    link = sandbox.sudo(f"readlink {APP_ROOT}/releases/{new.release_id}/.venv").strip()
    assert link == f"../../venvs/{new_hash}"
    # The slow interpreter only slowed the build: the venv runs the system Python itself.
    real = sandbox.sudo(f"readlink -f {APP_ROOT}/current/.venv/bin/python").strip()
    assert real.startswith("/usr/bin/python3"), real
    # The release it was added for can import the new dependency.
    assert sandbox.sudo(f"{APP_ROOT}/current/.venv/bin/python -c 'import six; print(1)'").strip()


# --- acceptance: a release that does not turn healthy is switched back ----------------------


def _raise_at_import(text: str) -> str:
    return text.replace(
        "RELEASE = read_release()",
        'RELEASE = read_release()\nraise RuntimeError("e2e-boom: the model file is missing")',
    )


def _health_500(text: str) -> str:
    return text.replace(
        "    return JSONResponse(\n        content={",
        "    return JSONResponse(\n        status_code=500,\n        content={",
    )


@pytest.mark.parametrize(
    ("label", "patch", "cause"),
    [
        pytest.param(
            "boom-at-import",
            _raise_at_import,
            ["the service exited while starting", "RuntimeError: e2e-boom"],
            id="fails-to-start",
        ),
        pytest.param(
            "health-500",
            _health_500,
            ["/health answered 500 3 times in a row"],
            id="health-500",
        ),
    ],
)
def test_unhealthy_release_is_switched_back(
    sandbox: Sandbox,
    base: Artifact,
    first_deploy: str,
    workdir: Path,
    label: str,
    patch: Callable[[str], str],
    cause: list[str],
) -> None:
    """Acceptance: an artifact whose app fails to start, and one whose /health returns 500:
    the deploy exits non-zero naming the cause, the previous release serves again, and
    revisions.log records it."""
    serve(sandbox, base)
    bad = build_variant(workdir, label, patch_main=patch)
    out = assert_failed(run_deploy(sandbox.inventory, bad.data))
    for text in cause:
        assert text in out
    assert f"switching back to release {base.release_id}" in out
    assert f"rolled back to {base.release_id}" in out

    assert serving_release(sandbox.address) == base.release_id
    assert sandbox.sudo(f"readlink {APP_ROOT}/current").strip() == f"releases/{base.release_id}"
    assert sandbox.sudo("systemctl is-active ai-server").strip() == "active"
    last = revisions(sandbox)[-1]
    assert last.split()[1:4] == ["deploy", bad.release_id, "failed"], last
    assert f"rolled-back-to={base.release_id}" in last
    assert not sandbox.sudo(f"ls -A {APP_ROOT}/.deploy.lock 2>/dev/null || true").strip()


# --- acceptance: bad artifacts are refused before the host is touched -----------------------


def _corrupt_gzip(path: Path) -> Path:
    """A good artifact cut short half-way, as an interrupted download leaves it."""
    data = write_tar(path, example_members()).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_ARTIFACTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "corrupt-gzip": (
        _corrupt_gzip,
        "is not a readable tar.gz",
    ),
    "dotdot": (
        lambda p: write_tar(p, [*example_members(), file_member("../evil.py", b"x = 1\n")]),
        "member '../evil.py' contains '..'",
    ),
    "absolute": (
        lambda p: write_tar(p, [*example_members(), file_member("/etc/cron.d/evil", b"x\n")]),
        "member '/etc/cron.d/evil' has an absolute path",
    ),
    "symlink-escape": (
        lambda p: write_tar(p, [*example_members(), link_member("data", "../../../etc")]),
        "link 'data' -> '../../../etc' points outside the release",
    ),
    "no-uv-lock": (
        lambda p: write_tar(p, example_members(without=("uv.lock",))),
        "has no uv.lock",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_ARTIFACTS))
def test_bad_artifact_is_refused_and_nothing_changes(
    sandbox: Sandbox, base: Artifact, first_deploy: str, workdir: Path, kind: str
) -> None:
    """Acceptance: bad artifacts (corrupt gzip, `../` member, absolute path member, symlink
    escaping the release, missing uv.lock): clear error, nothing on the host changed."""
    serve(sandbox, base)
    make, message = BAD_ARTIFACTS[kind]
    path = make(workdir / "bad" / f"ai-server-bad-{kind}.tar.gz")
    assert path.is_file()
    before = host_snapshot(sandbox)
    out = assert_failed(run_deploy(sandbox.inventory, f"artifact={path}"))
    assert "bad artifact" in out
    assert message in out
    assert str(path) in out
    assert host_snapshot(sandbox) == before
    assert serving_release(sandbox.address) == base.release_id


# --- acceptance: the deploy lock ------------------------------------------------------------


def test_two_deploys_at_once_one_proceeds_the_other_names_the_holder(
    sandbox: Sandbox, base: Artifact, first_deploy: str, workdir: Path
) -> None:
    """Acceptance: two deploys started together on one host: exactly one proceeds, the other
    reports the lock holder."""
    serve(sandbox, base)
    # Models that take 8 s to load keep the winner inside the lock long after the other one
    # has reached it, whichever of the two gets there first.
    one = build_variant(workdir, "together-1", patch_main=slow_start(8))
    two = build_variant(workdir, "together-2", patch_main=slow_start(8))
    runs = {a.release_id: start_deploy(sandbox.inventory, a.data) for a in (one, two)}
    codes = {rid: run.wait() for rid, run in runs.items()}
    winners = [rid for rid, code in codes.items() if code == 0]
    assert len(winners) == 1, {rid: run.output for rid, run in runs.items()}
    (winner,) = winners
    (loser,) = [rid for rid in runs if rid != winner]
    lost = runs[loser].output
    assert f"{APP_ROOT} is locked by" in lost
    assert f"deploy of {winner}" in lost
    assert f"pid {runs[winner].pid}" in lost
    assert "current ->" not in lost
    assert serving_release(sandbox.address) == winner
    assert not any(f" {loser} " in line for line in revisions(sandbox))


def test_killed_deploy_leaves_the_old_release_and_its_stale_lock_is_taken_over(
    sandbox: Sandbox, base: Artifact, first_deploy: str, workdir: Path
) -> None:
    """Acceptance: a deploy killed with SIGKILL mid-way leaves the service serving the old
    release, and the next deploy succeeds after the stale lock is handled."""
    serve(sandbox, base)
    # A dependency no other test adds, so that this lock's venv cannot exist yet.
    new = build_variant(workdir, "after-kill", relock=relock_on_host(sandbox, "iniconfig"))
    new_hash = lock_hash(workdir / "after-kill")
    pid_before = main_pid(sandbox)
    # The venv build is the long step a real deploy spends under the lock before it switches;
    # a slow interpreter keeps it running long enough to kill the deploy inside it.
    python = slow_python(sandbox, "python3-slow-kill", 60)
    run = start_deploy(sandbox.inventory, new.data, f"uv_python={python}")
    try:
        run.wait_for(f"building venv {new_hash[:12]}", timeout=120)
        time.sleep(1)
    finally:
        run.kill()
    assert "current ->" not in run.output

    # The old release still serves, untouched; the lock names the dead deploy.
    assert serving_release(sandbox.address) == base.release_id
    assert main_pid(sandbox) == pid_before
    assert sandbox.sudo(f"readlink {APP_ROOT}/current").strip() == f"releases/{base.release_id}"
    assert f'"pid": {run.pid}' in sandbox.sudo(f"cat {APP_ROOT}/.deploy.lock/info")
    assert not sandbox.sudo(
        f"test -e {APP_ROOT}/venvs/{new_hash}/.ai-deploy-complete && echo complete || true"
    ).strip()
    assert new.release_id not in sandbox.sudo(f"ls -1 {APP_ROOT}/releases").split()

    out = assert_ok(run_deploy(sandbox.inventory, new.data))
    assert "taking over a stale deploy lock" in out
    assert f"its deploy (pid {run.pid} on this machine) is no longer running" in out
    assert serving_release(sandbox.address) == new.release_id
    assert sandbox.sudo(f"test -e {APP_ROOT}/.deploy.lock || echo gone").strip() == "gone"
    leftovers = sandbox.sudo(f"ls -A {APP_ROOT}/releases | grep '^\\.' || true").strip()
    assert leftovers == "", f"half-made releases left behind: {leftovers}"


# --- acceptance: rollback -------------------------------------------------------------------


def test_rollback_brings_back_the_previous_release(
    sandbox: Sandbox, base: Artifact, first_deploy: str, workdir: Path
) -> None:
    """Acceptance: rollback brings back the previous release and /health names it
    (`ai-deploy rollback` wraps exactly this pyinfra run)."""
    serve(sandbox, base)
    newer = build_variant(workdir, "rollback-newer")
    serve(sandbox, newer)
    out = assert_ok(run_deploy(sandbox.inventory, "rollback=previous"))
    assert f"current -> releases/{base.release_id}" in out
    assert serving_release(sandbox.address) == base.release_id
    last = revisions(sandbox)[-1]
    assert last.split()[1:4] == ["rollback", base.release_id, "ok"], last
    assert f"previous={newer.release_id}" in last
    # Rolling back again returns to the release that was rolled back from.
    assert_ok(run_deploy(sandbox.inventory, "rollback=previous"))
    assert serving_release(sandbox.address) == newer.release_id
    # A named release works too.
    assert_ok(run_deploy(sandbox.inventory, f"rollback={base.release_id}"))
    assert serving_release(sandbox.address) == base.release_id


# --- acceptance: no artifact on a fresh host ------------------------------------------------


def test_no_artifact_on_a_fresh_host_converges_all_but_the_release(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Acceptance: `pyinfra INVENTORY deploy.py` with no artifact on a fresh host converges
    everything but the release and says no release is deployed yet; a second run changes
    nothing."""
    out = assert_ok(run_deploy(fresh_sandbox.inventory))
    assert "no release deployed yet" in out
    assert grand_total(out).success > 0

    host = infra_host(fresh_sandbox, tmp_path)
    try:
        service_user = host.user("ai-server")
        assert service_user.exists and service_user.shell == "/usr/sbin/nologin"
        assert "sudo" not in service_user.groups
        assert "not allowed to run sudo" in host.check_output("sudo -n -l -U ai-server || true")
        assert not host.file("/nonexistent").exists
        build_user = host.user("ai-server-build")  # derived from app_name
        assert build_user.exists and build_user.shell == "/usr/sbin/nologin"
        for path in (APP_ROOT, f"{APP_ROOT}/releases", f"{APP_ROOT}/venvs"):
            d = host.file(path)
            assert d.is_directory and d.user == "root", path
        assert host.check_output(f"find {APP_ROOT}/releases {APP_ROOT}/venvs -mindepth 1") == ""
        env = host.file(f"{APP_ROOT}/.env")
        assert env.mode == 0o600 and env.user == "ai-server"
        assert host.file("/var/log/ai-server").is_directory
        assert host.file("/etc/logrotate.d/ai-server").is_file
        assert host.check_output("/usr/local/bin/uv --version").startswith("uv 0.13.9")
        service = host.service("ai-server")
        assert host.file("/etc/systemd/system/ai-server.service").is_file
        assert host.file("/etc/systemd/system/ai-server.socket").is_file
        assert not service.is_running
        # Nothing listens until a release is in service (an open socket would answer nothing).
        assert not host.service("ai-server.socket").is_running
        assert not host.file(f"{APP_ROOT}/current").exists
    finally:
        host.backend.client.close()

    before = host_snapshot(fresh_sandbox)
    again = assert_ok(run_deploy(fresh_sandbox.inventory))
    totals = grand_total(again)
    assert (totals.success, totals.error) == (0, 0), again
    assert "no release deployed yet" in again
    assert host_snapshot(fresh_sandbox) == before


# --- the .env content is never printed ------------------------------------------------------


def test_env_file_content_never_shows_even_with_diff(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Issue 3, state 5: `--data env_file=PATH` uploads the .env, whose content is never
    printed, not even with --diff (a new file, then a changed one, the second at -vvv)."""
    for n, secret in enumerate(("E2E-SECRET-first-8c1f", "E2E-SECRET-second-51d2")):
        env_file = tmp_path / f"run{n}.env"
        env_file.write_text(f"MODEL_LOAD_SECONDS=2\nAPI_TOKEN={secret}\n")
        # The second run also prints every command pyinfra runs (-vvv).
        flags = ("--diff",) if n == 0 else ("--diff", "-vvv")
        out = assert_ok(run_deploy(fresh_sandbox.inventory, f"env_file={env_file}", extra=flags))
        assert "content will change (not shown)" in out
        assert secret not in out
        assert "API_TOKEN" not in out
        on_host = fresh_sandbox.sudo(f"cat {APP_ROOT}/.env")
        assert f"API_TOKEN={secret}" in on_host
        mode = fresh_sandbox.sudo(f"stat -c '%a %U %G' {APP_ROOT}/.env").strip()
        assert mode == "600 ai-server ai-server"
    # Nothing of the content is left in a temporary file beside it.
    left = set(fresh_sandbox.sudo(f"ls -A {APP_ROOT}").split())
    assert left == {".env", ".incoming", ".staging", "cache", "releases", "venvs"}
    staged = fresh_sandbox.sudo(f"grep -rl E2E-SECRET {APP_ROOT}/.staging /tmp || true")
    assert staged.strip() == ""
