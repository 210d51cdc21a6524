"""Helpers for the deploy's end-to-end tests: pyinfra runs as a subprocess from the repo root,
artifact variants built from the example app, hand-made bad artifacts, and host snapshots."""

from __future__ import annotations

import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import testinfra
import testinfra.backend
import testinfra.host

from ai_deploy.artifact.build import build_artifact, release_id_from_artifact
from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.image import SandboxError
from ai_deploy.sandbox.paths import ssh_key_path
from tests.e2e.conftest import Sandbox, require_root

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ai-server"
PYINFRA = REPO / ".venv" / "bin" / "pyinfra"
PYTHON = REPO / ".venv" / "bin" / "python"
APP_ROOT = "/app/ai-server"
DEPLOY_TIMEOUT_S = 600.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_END = "--deploykit-read-complete--"  # the last line of every read_host script


# --- pyinfra runs ---------------------------------------------------------------------------


def deploy_command(inventory: Path, *data: str, extra: tuple[str, ...] = ()) -> list[str]:
    """`pyinfra -y INVENTORY deploy.py --data k=v ...` (EXTRA goes before the inventory)."""
    args = [str(PYINFRA), "-y", *extra, str(inventory), "deploy.py"]
    for item in data:
        args += ["--data", item]
    return args


def _env() -> dict[str, str]:
    # No colours, so the output can be matched as plain text.
    return dict(os.environ, NO_COLOR="1", TERM="dumb")


def run_deploy(
    inventory: Path, *data: str, extra: tuple[str, ...] = (), timeout: float = DEPLOY_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run pyinfra from the repo root; stdout and stderr together in `.stdout`."""
    proc = subprocess.run(
        deploy_command(inventory, *data, extra=extra),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )
    proc.stdout = _ANSI.sub("", proc.stdout)
    return proc


def cli_env(ssh: bool = True, **extra: str) -> dict[str, str]:
    """The environment of `ai-deploy` run outside CI on sandbox hosts: their SSH user and key
    (with SSH false: no AI_DEPLOY_ variable at all, the app's settings file says how to reach
    them), no GCP or GitHub Actions variables, no colours, the default (short) output; EXTRA on
    top."""
    skip = ("GCP_", "GITHUB_", "AI_DEPLOY_VERBOSE", *(() if ssh else ("AI_DEPLOY_",)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    if ssh:
        env.update(
            AI_DEPLOY_SSH_USER="ubuntu", AI_DEPLOY_SSH_PRIVATE_KEY=ssh_key_path().read_text()
        )
    env.update(NO_COLOR="1", TERM="dumb", **extra)
    return env


def run_cli(
    tool: Path, cwd: Path, *args: str, ssh: bool = True, **extra_env: str
) -> tuple[int, str]:
    """TOOL (an `ai-deploy`) with ARGS in CWD and cli_env(SSH, EXTRA_ENV): its exit code and
    its stdout and stderr together, also printed for the test's log."""
    proc = subprocess.run(
        [str(tool), *args],
        cwd=cwd,
        env=cli_env(ssh, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=900,
    )
    out = _ANSI.sub("", proc.stdout)
    print(f"$ ai-deploy {' '.join(args)}\n{out}\n(exit {proc.returncode})")
    return proc.returncode, out


@dataclass
class StreamedDeploy:
    """A pyinfra run in its own process group whose output lines are timestamped as read."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(line for _, line in list(self.lines))

    def first(self, needle: str) -> float | None:
        """When (time.monotonic) the first line containing NEEDLE was read."""
        return next((t for t, line in list(self.lines) if needle in line), None)

    def wait_for(self, needle: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while (seen := self.first(needle)) is None:
            if self.proc.poll() is not None and self._reader and not self._reader.is_alive():
                raise AssertionError(f"deploy ended before {needle!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout:.0f} s:\n{self.output}")
            time.sleep(0.02)
        return seen

    def wait(self, timeout: float = DEPLOY_TIMEOUT_S) -> int:
        code = self.proc.wait(timeout=timeout)
        if self._reader:
            self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (pyinfra and anything it started)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.wait(timeout=30)


def start_deploy(inventory: Path, *data: str) -> StreamedDeploy:
    proc = subprocess.Popen(
        deploy_command(inventory, *data),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    run = StreamedDeploy(proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append((time.monotonic(), _ANSI.sub("", line)))

    run._reader = threading.Thread(target=read, daemon=True)
    run._reader.start()
    return run


@dataclass(frozen=True)
class Totals:
    """pyinfra's "Grand total" line: '-' is read as 0."""

    hosts: int
    success: int
    error: int
    no_change: int


_TOTAL = re.compile(r"^\s*Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.MULTILINE)


def grand_total(output: str) -> Totals:
    match = _TOTAL.search(output)
    assert match, f"no Grand total line in pyinfra's output:\n{output}"
    values = [0 if v == "-" else int(v) for v in match.groups()]
    return Totals(*values)


def assert_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout
    return result.stdout


def assert_failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    return result.stdout


# --- ai-deploy commands ---------------------------------------------------------------------


def cli(
    inventory: Path, verb: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`ai-deploy VERB -i INVENTORY ARGS` as users run it (VERB may be two words: "cache
    clear"), outside GCP; never a traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("GCP_ZONE", "GCP_INSTANCE")}
    done = subprocess.run(
        [str(PYTHON), "-m", "ai_deploy.cli", *verb.split(), "-i", str(inventory), *args],
        cwd=REPO,
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def cli_ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@contextmanager
def sandbox_with(label: str, settings: dict[str, object], where: Path) -> Iterator[Sandbox]:
    """A fresh sandbox host named LABEL-<pid> whose inventory (written in WHERE) carries
    SETTINGS as host data, so every run and command reads them (a JSON text on pyinfra's --data
    would be read as a literal); the host goes down on every way out."""
    require_root()
    started, inventory = hosts.up(count=1, name=f"{label}-{os.getpid() % 100_000}")
    try:
        listed = runpy.run_path(str(inventory))["sandbox"]
        ours = where / "sandbox.py"
        ours.write_text(f"sandbox = {[(n, {**d, **settings}) for n, d in listed]!r}\n")
        yield Sandbox(started[0], ours)
    finally:
        hosts.down([started[0].name])


# --- what the host serves -------------------------------------------------------------------


def health(address: str, timeout: float = 5.0) -> requests.Response:
    return requests.get(f"http://{address}:8000/health", timeout=timeout)


def serving_release(address: str) -> str:
    reply = health(address)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["release"])


@dataclass(frozen=True)
class Probe:
    started: float
    ended: float
    ok: bool
    release: str | None
    error: str = ""


@contextmanager
def predict_traffic(address: str, every_s: float = 0.05) -> Iterator[list[Probe]]:
    """Send GET /predict every EVERY_S seconds in a thread while the block runs; yields the
    list the probes are appended to (times are time.monotonic)."""
    probes: list[Probe] = []
    stop = threading.Event()

    def loop() -> None:
        n = 0
        with requests.Session() as session:
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    reply = session.get(
                        f"http://{address}:8000/predict", params={"q": f"q{n}"}, timeout=5
                    )
                    ok = reply.status_code == 200
                    release = reply.json().get("release") if ok else None
                    probes.append(Probe(started, time.monotonic(), ok, release, reply.text[:200]))
                except (requests.RequestException, ValueError) as exc:
                    probes.append(Probe(started, time.monotonic(), False, None, repr(exc)))
                stop.wait(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield probes
    finally:
        stop.set()
        thread.join(timeout=30)


# --- the host's tree ------------------------------------------------------------------------


def read_host(sandbox: Sandbox, script: str, what: str) -> str:
    """SCRIPT's output, run with sudo under `set -e`. Fails, naming WHAT, when the host cannot
    be reached or SCRIPT does not run to its end: an unreachable host never reads as empty."""
    try:
        out = sandbox.sudo(f"set -e\n{script}\necho {_END}")
    except SandboxError as exc:
        raise AssertionError(
            f"cannot reach sandbox host {sandbox.name} ({sandbox.address}) to read {what}: {exc}"
        ) from exc
    body, end, rest = out.rpartition(_END)
    assert end and rest == "\n", f"reading {what} on {sandbox.name} stopped short: {out!r}"
    return body


def tree(sandbox: Sandbox, root: str = APP_ROOT) -> list[str]:
    """Every path under ROOT with type, owner, mode, size, link target, mtime, sorted ([]: none)."""
    q = shlex.quote(root)
    script = (
        f"if [ -e {q} ] || [ -L {q} ]; then\n"
        f"  listing=$(find {q} -printf '%p %y %U %m %s %l %T@\\n')\n"
        "  printf '%s\\n' \"$listing\" | sort\nfi"
    )
    return read_host(sandbox, script, f"the tree under {root}").splitlines()


def host_snapshot(sandbox: Sandbox) -> dict[str, object]:
    """The app tree plus what else a deploy could change: unit, uv, logrotate, the service."""
    etc = read_host(
        sandbox,  # `ls` exits 2 when one is missing, which its output shows: no error here
        "ls -l --time-style=full-iso /etc/systemd/system/ai-server.service "
        "/etc/logrotate.d/ai-server /usr/local/bin/uv 2>&1 || true",
        "the unit, logrotate and uv files",
    )
    return {"tree": tree(sandbox), "etc": etc, "main_pid": main_pid(sandbox)}


def main_pid(sandbox: Sandbox) -> str:
    """ai-server's MainPID as systemd reports it ("0" when it does not run)."""
    pid = read_host(sandbox, "systemctl show -p MainPID --value ai-server", "MainPID").strip()
    assert pid.isdigit(), f"systemctl gave no MainPID for ai-server on {sandbox.name}: {pid!r}"
    return pid


def revisions(sandbox: Sandbox) -> list[str]:
    log = shlex.quote(f"{APP_ROOT}/revisions.log")
    return read_host(sandbox, f"if [ -e {log} ]; then cat {log}; fi", "revisions.log").splitlines()


def infra_host(sandbox: Sandbox, config_dir: Path) -> testinfra.host.Host:
    """A testinfra host over paramiko as `ubuntu` with sudo, not cached by address (addresses
    are reused by later sandbox hosts) and never pinning the shared host keys."""
    config = config_dir / f"ssh_config-{sandbox.name}"
    config.write_text(
        f"Host {sandbox.address}\n"
        "  User ubuntu\n"
        f"  IdentityFile {ssh_key_path()}\n"
        "  StrictHostKeyChecking no\n"
    )
    backend = testinfra.backend.get_backend(
        f"paramiko://ubuntu@{sandbox.address}", ssh_config=str(config), sudo=True
    )
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


# --- artifacts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    path: Path
    release_id: str

    @property
    def data(self) -> str:
        return f"artifact={self.path}"


def copy_example(dest: Path) -> Path:
    shutil.copytree(
        EXAMPLE, dest, ignore=shutil.ignore_patterns(".venv", "__pycache__", ".env*", "dist")
    )
    return dest


def build_variant(
    workdir: Path,
    label: str,
    *,
    patch_main: Callable[[str], str] | None = None,
    relock: Callable[[Path], None] | None = None,
) -> Artifact:
    """The example app copied to WORKDIR/LABEL, its main.py patched and its lock redone when
    asked, built into WORKDIR/dist-LABEL. A LABEL comment in main.py gives every variant its
    own release id."""
    src = copy_example(workdir / label)
    main = src / "main.py"
    text = main.read_text()
    if patch_main:
        patched = patch_main(text)
        assert patched != text, f"the patch for {label} changed nothing in main.py"
        text = patched
    main.write_text(f"{text}\n# variant: {label}\n")
    if relock:
        relock(src)
    path = build_artifact(src, workdir / f"dist-{label}")
    return Artifact(path, release_id_from_artifact(path))


def example_artifact(workdir: Path) -> Artifact:
    path = build_artifact(EXAMPLE, workdir / "dist-example")
    return Artifact(path, release_id_from_artifact(path))


def relock_on_host(sandbox: Sandbox, add_dependency: str) -> Callable[[Path], None]:
    """A relock step that adds ADD_DEPENDENCY to pyproject.toml and runs `uv lock` inside the
    sandbox host (the test process may reach only loopback and the sandbox guests; the guests
    reach the package index), then brings the new uv.lock back."""

    def relock(src: Path) -> None:
        pyproject = src / "pyproject.toml"
        text = pyproject.read_text()
        marker = "dependencies = [\n"
        assert marker in text
        pyproject.write_text(text.replace(marker, f'{marker}    "{add_dependency}",\n', 1))
        work = f"/tmp/relock-{src.name}"
        sandbox.ssh(f"rm -rf {work} && mkdir -p {work}")
        sandbox.put(pyproject, f"{work}/pyproject.toml")
        sandbox.put(src / "uv.lock", f"{work}/uv.lock")
        sandbox.ssh(
            f"cd {work} && UV_PYTHON_DOWNLOADS=never /usr/local/bin/uv lock --python python3",
            timeout=300,
        )
        lock = sandbox.ssh(f"cat {work}/uv.lock")
        assert f'name = "{add_dependency}"' in lock, lock
        (src / "uv.lock").write_text(lock)

    return relock


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar.gz holding MEMBERS exactly as given (no checks: this is how bad ones are made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def file_member(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def link_member(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    return info, None


def example_members(*, without: tuple[str, ...] = ()) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The example app's files as tar members (a good artifact's content)."""
    names = ("README.md", "main.py", "engine.py", "pyproject.toml", "uv.lock")
    return [file_member(n, (EXAMPLE / n).read_bytes()) for n in names if n not in without]
