"""A host in a temporary directory, for fast tests of the release logic (ai_deploy.host).

`LocalRemote` runs the gate's shell on this machine with `sh -c`, as `PyinfraRemote` runs it on
a host (pyinfra's shell is `sh`: dash on Ubuntu, so a bash-only construct fails here as it
would there): the shell itself is what is tested. System paths are mapped under a temporary
root (`/etc/...` becomes `<sysroot>/etc/...`) and a script that still names another system
path is refused, so a test run as root never touches this machine's /etc.

Stand-ins on PATH (bin/): `systemctl` keeps unit state in files under state/units/<unit>/ and
starts a unit by reading the release its working directory resolves to; `nginx -t` passes
(fails when state/nginx.fail exists);
`uv sync` makes a venv (or fails when state/uv.fail exists) and logs each call; `python3` is
the interpreter running the tests, without site (the health probe needs only the standard
library).
`sha256sum`, `tar`, `readlink`, `mv`, `grep`, `stat` are the real ones.

What a started unit does comes from its release: the file BEHAVIOUR in the release (written
into the artifact by `FakeHost.artifact`), or state/units/<unit>/behaviour, which wins:
  healthy    /health answers 200 "release <id>"
  unhealthy  /health answers 500
  silent     the unit runs, but every connection is closed without an answer
  crash      the process exits at once (systemd: activating/auto-restart, status 1)
  refuse     `systemctl start/restart` itself fails
A release whose .venv is not a complete venv crashes, as uvicorn would be missing.

`FakeHost` listens on three ephemeral loopback ports (public, blue, green) with one threaded
HTTP server each; what answers there is read from the stand-in's state: the public port is
ai-server.service, or, while nginx runs with our site, the colour its upstream file named when
nginx last started or reloaded (blue/green)."""

from __future__ import annotations

import functools
import getpass
import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ai_deploy.host import strategies
from ai_deploy.host.facts import AppTree, read_tree
from ai_deploy.host.gate import put_in_service
from ai_deploy.host.outcome import HostOutcome
from ai_deploy.host.paths import COLOURS, UNIT_DIR, Layout
from ai_deploy.host.remote import Result
from ai_deploy.host.settings import Spec
from ai_deploy.project import group_data_defaults

DEPLOYER = "runner-under-test"

# An absolute system path where a script begins a word (not inside a longer path).
_ETC = re.compile(r"(?<![\w./-])/etc/")
_SYSTEM_PATH = re.compile(r"(?<![\w./-])/(etc|usr|var|lib|opt|srv|app|boot|home|root|run)/")

SYSTEMCTL = r"""#!/usr/bin/env bash
# systemctl stand-in (tests/unit/hostkit.py): unit state in files under $FAKE_STATE/units.
set -u
S=${FAKE_STATE:?}
SYSROOT=${FAKE_SYSROOT:?}
echo "systemctl $*" >> "$S/calls.log"
norm() { case "$1" in *.*) echo "$1" ;; *) echo "$1.service" ;; esac; }
quiet= value= now= cmd= props=() units=()
while [ $# -gt 0 ]; do
  case "$1" in
    -q|--quiet) quiet=1 ;;
    --value) value=1 ;;
    --now) now=1 ;;
    --no-pager|--no-block|--no-reload) ;;
    -p) props+=("$2"); shift ;;
    --property=*) props+=("${1#--property=}") ;;
    -*) echo "systemctl stand-in: unknown option $1" >&2; exit 2 ;;
    *) if [ -z "$cmd" ]; then cmd=$1; else units+=("$(norm "$1")"); fi ;;
  esac
  shift
done
d() { mkdir -p "$S/units/$1"; echo "$S/units/$1"; }
get() { cat "$S/units/$1/$2" 2>/dev/null || echo "$3"; }
put() { printf '%s\n' "$3" > "$(d "$1")/$2"; }
has_file() {
  local u=$1
  [ -e "$SYSROOT/etc/systemd/system/$u" ] || [ -e "$SYSROOT/lib/systemd/system/$u" ] && return 0
  case "$u" in *@*) [ -e "$SYSROOT/etc/systemd/system/${u%%@*}@.service" ] && return 0 ;; esac
  return 1
}
errlog() { local b=${1%.service}; echo "$FAKE_LOG_DIR/${b/@/-}-error.log"; }
# nginx reads our site and its upstream file when it starts or reloads, not in between.
load_nginx() {
  rm -f "$S/nginx.loaded"
  if [ -e "$FAKE_NGINX_SITE" ]; then cp "$FAKE_NGINX_UPSTREAM" "$S/nginx.loaded"; fi
}
start() {
  local u=$1 wd rel beh
  if ! has_file "$u"; then echo "Failed to start $u: Unit $u not found." >&2; return 5; fi
  beh=$(get "$u" behaviour "")
  case "$u" in
    *.socket) put "$u" active active; put "$u" sub listening; return 0 ;;
    nginx.service) load_nginx ;;
  esac
  wd=$(cat "$S/workdir/$u" 2>/dev/null)
  if [ -n "$wd" ] && [ ! -e "$wd" ]; then
    # ConditionPathExists= not met: nothing starts, and that is not an error.
    put "$u" active inactive; put "$u" sub dead; put "$u" pid 0; return 0
  fi
  rel=
  [ -n "$wd" ] && rel=$(readlink -f "$wd")
  [ -n "$beh" ] || beh=$(cat "$rel/BEHAVIOUR" 2>/dev/null || echo healthy)
  if [ "$beh" = refuse ]; then
    put "$u" active failed; put "$u" sub failed; put "$u" pid 0
    echo "Job for $u failed because the control process exited with error code." >&2; return 1
  fi
  put "$u" release "$rel"
  if [ -n "$wd" ] && { [ ! -e "$rel/.venv/.ai-deploy-complete" ] ||
    [ ! -e "$rel/.venv/bin/uvicorn" ]; }; then
    echo "$u: $wd/.venv/bin/uvicorn: No such file or directory" >> "$(errlog "$u")"
    beh=crash
  fi
  if [ "$beh" = crash ]; then
    echo "Traceback: release ${rel##*/} crashed while starting ($u)" >> "$(errlog "$u")"
    put "$u" active activating; put "$u" sub auto-restart; put "$u" status 1; put "$u" pid 0
  else
    put "$u" active active; put "$u" sub running; put "$u" status 0; put "$u" pid $((RANDOM + 1000))
  fi
  put "$u" answer "$beh"
}
stop() {
  local u=$1
  if [ ! -d "$S/units/$u" ] && ! has_file "$u"; then
    echo "Failed to stop $u: Unit $u not loaded." >&2; return 5
  fi
  put "$u" active inactive; put "$u" sub dead; put "$u" pid 0
}
rc=0
case "$cmd" in
  daemon-reload) ;;
  start)
    for u in "${units[@]}"; do [ "$(get "$u" active x)" = active ] || start "$u" || rc=$?; done ;;
  restart) for u in "${units[@]}"; do start "$u" || rc=$?; done ;;
  stop) for u in "${units[@]}"; do stop "$u" || rc=$?; done ;;
  reload)
    for u in "${units[@]}"; do
      if [ "$(get "$u" active x)" != active ]; then
        echo "$u is not active, cannot reload." >&2; rc=1
      else
        echo reloaded >> "$(d "$u")/reloads"; [ "$u" != nginx.service ] || load_nginx
      fi
    done ;;
  enable|disable)
    for u in "${units[@]}"; do
      if ! has_file "$u"; then
        echo "Failed to $cmd unit: Unit file $u does not exist." >&2; rc=1; continue
      fi
      if [ "$cmd" = enable ]; then
        touch "$(d "$u")/enabled"; [ -n "$now" ] && { start "$u" || rc=$?; }
      else
        rm -f "$(d "$u")/enabled"; [ -n "$now" ] && { stop "$u" || rc=$?; }
      fi
    done ;;
  is-active)
    rc=0
    for u in "${units[@]}"; do
      s=$(get "$u" active inactive); [ -n "$quiet" ] || echo "$s"; [ "$s" = active ] || rc=3
    done ;;
  is-enabled)
    rc=0
    for u in "${units[@]}"; do
      if [ -e "$S/units/$u/enabled" ]; then s=enabled; else s=disabled; rc=1; fi
      [ -n "$quiet" ] || echo "$s"
    done ;;
  show)
    for u in "${units[@]}"; do
      for p in "${props[@]}"; do
        case "$p" in
          ActiveState) v=$(get "$u" active inactive) ;;
          SubState) v=$(get "$u" sub dead) ;;
          NRestarts) v=$(get "$u" restarts 0) ;;
          ExecMainStatus) v=$(get "$u" status 0) ;;
          MainPID) v=$(get "$u" pid 0) ;;
          *) v= ;;
        esac
        if [ -n "$value" ]; then echo "$v"; else echo "$p=$v"; fi
      done
    done ;;
  *) echo "systemctl stand-in: unknown command $cmd" >&2; rc=2 ;;
esac
exit $rc
"""

NGINX = r"""#!/usr/bin/env bash
# nginx stand-in: `nginx -t` passes unless $FAKE_STATE/nginx.fail exists.
echo "nginx $*" >> "$FAKE_STATE/calls.log"
if [ -e "$FAKE_STATE/nginx.fail" ]; then echo "nginx: configuration test failed" >&2; exit 1; fi
exit 0
"""

UV = r"""#!/usr/bin/env bash
# uv stand-in: `uv sync` makes $UV_PROJECT_ENVIRONMENT (with a world-writable .lock, as uv
# leaves it), logs the call, and fails when $FAKE_STATE/uv.fail exists.
# `uv --version` prints $FAKE_STATE/uv.version (or a fixed line); `uv venv [opts] DIR` makes
# DIR/bin/python, a link to the tests' python3, run as `id -un` records in venv.log.
case "${1:-}" in
  --version) cat "$FAKE_STATE/uv.version" 2>/dev/null || echo "uv 0.13.9 (stand-in)"; exit 0 ;;
  venv)
    for d in "$@"; do :; done
    mkdir -p "$d/bin" && ln -sfn "$(command -v python3)" "$d/bin/python" &&
      printf 'home = /usr/bin\nrelocatable = true\n' > "$d/pyvenv.cfg" || exit 1
    echo "$(id -un) HOME=${HOME:-} UV_CACHE_DIR=${UV_CACHE_DIR:-} $*" >> "$FAKE_STATE/venv.log"
    exit 0 ;;
esac
echo "$PWD UV_PYTHON_DOWNLOADS=${UV_PYTHON_DOWNLOADS:-} $*" >> "$FAKE_STATE/uv.log"
[ "${1:-}" = sync ] || { echo "uv stand-in: only sync" >&2; exit 2; }
[ -f uv.lock ] || { echo "error: No \`uv.lock\` found" >&2; exit 2; }
if [ -e "$FAKE_STATE/uv.fail" ]; then
  echo "error: Failed to download \`torch==2.9.0\` (stand-in)"; exit 1
fi
[ ! -e "$FAKE_STATE/uv.sleep" ] || sleep "$(cat "$FAKE_STATE/uv.sleep")"
venv=${UV_PROJECT_ENVIRONMENT:?}
mkdir -p "$venv/bin" && printf '#!/bin/sh\nexit 0\n' > "$venv/bin/uvicorn" && touch "$venv/.lock"
chmod 0777 "$venv/bin/uvicorn"; chmod 0666 "$venv/.lock"
echo "Installed 42 packages"
"""


@functools.cache
def _defaults() -> dict[str, Any]:
    return group_data_defaults()


def group_data(**overrides: Any) -> dict[str, Any]:
    """group_data/all.py's settings (the only copy of the defaults) with OVERRIDES."""
    return {**_defaults(), **overrides}


class LocalRemote:
    """A `Remote` that runs each script with `sh -c` here, recording scripts and messages."""

    def __init__(self, sysroot: Path, env: dict[str, str], cwd: Path, shell: str = "sh") -> None:
        self.sysroot = sysroot
        self.shell = shell
        self.env = env
        self.cwd = cwd
        self.scripts: list[str] = []
        self.said: list[str] = []
        self.warned: list[str] = []

    def map_paths(self, script: str) -> str:
        mapped = _ETC.sub(f"{self.sysroot}/etc/", script)
        stray = _SYSTEM_PATH.search(mapped)
        if stray:
            raise AssertionError(f"script names a system path {stray.group(0)!r}:\n{script}")
        return mapped

    def run(self, script: str, *, timeout: float | None = None) -> Result:
        self.scripts.append(script)
        proc = subprocess.run(
            [self.shell, "-c", self.map_paths(script)],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=min(timeout or 60, 60),
        )
        return Result(proc.returncode == 0, proc.stdout.splitlines(), proc.stderr.splitlines())

    def say(self, message: str) -> None:
        self.said.append(message)

    def warn(self, message: str) -> None:
        self.warned.append(message)


@dataclass(frozen=True)
class UnitState:
    active: str
    sub: str
    enabled: bool
    release: str | None  # the release id the unit's process runs (when it has one)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        answer = self.server.host.answer_for(self.server.server_address[1], self.path)
        if answer is None:
            self.close_connection = True  # no answer at all: the probe sees HTTP 0
            return
        code, body = answer
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        """As GET, after recording the request's path and body (the ready probe's)."""
        length = int(self.headers.get("Content-Length") or 0)
        self.server.host.posted.append((self.path, self.rfile.read(length)))
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: FakeHost) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.host = host


class FakeHost:
    """One app on one host, under TMP: the app tree, a sysroot for /etc, stand-in tools, and
    the loopback ports the app answers on. Use as a context manager (servers are stopped)."""

    app_name = "ai-server"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.app_root = tmp / "app"
        self.sysroot = tmp / "sys"
        self.state = tmp / "state"
        self.bin = tmp / "bin"
        self.log_dir = tmp / "log"
        self.uploads = tmp / "uploads"
        for path in (
            self.sysroot / "etc/systemd/system",
            self.sysroot / "lib/systemd/system",
            self.sysroot / "etc/nginx/sites-available",
            self.sysroot / "etc/nginx/sites-enabled",
            self.state / "units",
            self.state / "workdir",
            self.bin,
            self.log_dir,
            self.uploads,
        ):
            path.mkdir(parents=True, exist_ok=True)
        (self.sysroot / "lib/systemd/system/nginx.service").write_text("[Service]\n")
        for name, text in (("systemctl", SYSTEMCTL), ("nginx", NGINX), ("uv", UV)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        # No site-packages for the probe: it needs only the standard library, and skipping
        # site (and whatever .pth files this machine has) saves most of its start-up time.
        (self.bin / "python3").write_text(
            f'#!/bin/sh\nexec {shlex.quote(os.path.realpath(sys.executable))} -S "$@"\n'
        )
        (self.bin / "python3").chmod(0o755)
        self.layout = Layout(str(self.app_root), self.app_name, str(self.log_dir))
        # Where each unit's process runs (its WorkingDirectory=, resolved when it starts).
        (self.state / "workdir" / self.layout.service).write_text(f"{self.app_root}/current")
        for colour in COLOURS:
            unit = self.layout.colour_unit(colour)
            (self.state / "workdir" / unit).write_text(f"{self.app_root}/colors/{colour}")
        self.servers = [_Server(self) for _ in range(3)]
        self.threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
            for s in self.servers
        ]
        for thread in self.threads:
            thread.start()
        self.port, blue, green = (s.server_address[1] for s in self.servers)
        self.colour_ports = (blue, green)
        env = {
            "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(tmp),
            "LC_ALL": "C",
            "FAKE_STATE": str(self.state),
            "FAKE_SYSROOT": str(self.sysroot),
            "FAKE_LOG_DIR": str(self.log_dir),
            "FAKE_NGINX_SITE": str(self.etc(self.layout.nginx_site)),
            "FAKE_NGINX_UPSTREAM": str(self.etc(str(self.data()["bluegreen_upstream"]))),
        }
        self.remote = LocalRemote(self.sysroot, env, tmp)
        self._artifacts = 0
        self.posted: list[tuple[str, bytes]] = []  # POSTs any port got: (path, body)

    def __enter__(self) -> FakeHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    # --- settings ---
    def data(self, **overrides: Any) -> dict[str, Any]:
        """group_data for this host: the project's defaults, pointed at the temporary tree."""
        here = {
            "app_root": str(self.app_root),
            "app_name": self.app_name,
            "app_log_dir": str(self.log_dir),
            "app_port": self.port,
            "bluegreen_ports": self.colour_ports,
            "bluegreen_drain_s": 0,
            "health_interval_s": 0.01,
            "health_deadline_s": 2,
            "uv_path": str(self.bin / "uv"),
            "code_owner": getpass.getuser(),
            # No build user here: the build runs as this user, without runuser (venv.py skips
            # the switch when it already runs as build_user).
            "build_user": getpass.getuser(),
            "uv_env": {"UV_CACHE_DIR": str(self.tmp / "uv-cache")},
        }
        return group_data(**{**here, **overrides})

    def spec(self, release_id: str = "", *, action: str = "deploy", **overrides: Any) -> Spec:
        run = {
            k: overrides.pop(k)
            for k in (
                *("artifact_remote", "artifact_sha256", "lock_hash"),
                *("who", "pid", "deployer", "machine", "run_id"),
            )
            if k in overrides
        }
        run.setdefault("deployer", DEPLOYER)
        return Spec.from_data(self.data(**overrides), action=action, release_id=release_id, **run)

    # --- artifacts ---
    def artifact(
        self,
        release_id: str,
        *,
        behaviour: str = "healthy",
        lock: str = "lock-v1",
        extra: dict[str, bytes] | None = None,
    ) -> tuple[str, str]:
        """An uploaded artifact (tar.gz) for RELEASE_ID: its path on the host and its sha256."""
        files = {
            "main.py": b"app = None\n",
            "uv.lock": f"version = 1\n# {lock}\n".encode(),
            "BEHAVIOUR": f"{behaviour}\n".encode(),
            **(extra or {}),
        }
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
        self._artifacts += 1
        path = self.uploads / f"{release_id}-{self._artifacts}.tar.gz"
        path.write_bytes(buf.getvalue())
        return str(path), hashlib.sha256(buf.getvalue()).hexdigest()

    # --- what the unit task and prepare_host put in place ---
    def install_units(self, strategy: str) -> None:
        """The unit files of STRATEGY (tasks/unit.py) and its prepare_host, as files here."""
        d = SimpleNamespace(**self.data(deploy_strategy=strategy))
        s = strategies.get(strategy)
        for unit in s.unit_files(d):
            self.etc(f"{UNIT_DIR}/{unit.unit}").write_text(f"# {unit.template}\n")
        for unit in s.boot_units(self.layout):
            (self.state / "units" / unit).mkdir(parents=True, exist_ok=True)
            (self.state / "units" / unit / "enabled").touch()
        if strategy == "bluegreen":
            self.etc(self.layout.nginx_site_available).write_text("# site\n")
            upstream = self.etc(d.bluegreen_upstream)
            if not upstream.exists():
                upstream.write_text(f"server 127.0.0.1:{self.colour_ports[0]};\n")
            (self.app_root / "colors").mkdir(parents=True, exist_ok=True)

    # --- running the gate ---
    def deploy(
        self,
        release_id: str,
        *,
        behaviour: str = "healthy",
        strategy: str = "socket",
        lock: str = "lock-v1",
        action: str = "deploy",
        **overrides: Any,
    ) -> HostOutcome:
        """Put RELEASE_ID in service as ai_deploy.host.ops does: units first, then the gate;
        the artifact is uploaded only when the release is not on the host yet."""
        self.install_units(strategy)
        have = release_id in self.tree().releases
        if not have:
            art, sha = self.artifact(release_id, behaviour=behaviour, lock=lock)
            overrides.update(artifact_remote=art, artifact_sha256=sha)
        spec = self.spec(release_id, action=action, deploy_strategy=strategy, **overrides)
        return put_in_service(self.remote, spec, host="h1", have_release=have)

    # --- the host's state, as a test reads it ---
    def etc(self, path: str) -> Path:
        """The file behind an absolute /etc path on this host."""
        assert path.startswith("/etc/"), path
        return self.sysroot / path.lstrip("/")

    def tree(self) -> AppTree:
        return read_tree(self.remote, self.layout)

    def link(self, name: str) -> str | None:
        """The release id `current`, `previous` or `colors/<colour>` names, or None."""
        path = self.app_root / name
        return os.readlink(path).rsplit("/", 1)[-1] if path.is_symlink() else None

    def journal(self) -> list[str]:
        path = self.app_root / "revisions.log"
        return path.read_text().splitlines() if path.exists() else []

    def unit(self, unit: str) -> UnitState:
        d = self.state / "units" / unit

        def get(name: str, default: str) -> str:
            p = d / name
            return p.read_text().strip() if p.exists() else default

        release = get("release", "")
        return UnitState(
            active=get("active", "inactive"),
            sub=get("sub", "dead"),
            enabled=(d / "enabled").exists(),
            release=release.rsplit("/", 1)[-1] if release else None,
        )

    def set_behaviour(self, unit: str, behaviour: str | None) -> None:
        """What UNIT does from its next start on, whatever its release (None: its release's)."""
        path = self.state / "units" / unit / "behaviour"
        path.parent.mkdir(parents=True, exist_ok=True)
        if behaviour is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(behaviour + "\n")

    def uv_calls(self) -> list[str]:
        path = self.state / "uv.log"
        return path.read_text().splitlines() if path.exists() else []

    def get(self, port: int | None = None, path: str = "/health") -> tuple[int, str]:
        """What answers GET PATH on PORT (the public port by default): (status, body); 0 when
        nothing answers."""
        url = f"http://127.0.0.1:{port or self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    # --- the app behind the ports (called from the HTTP servers' threads) ---
    def _unit_behind(self, port: int) -> str | None:
        for colour, colour_port in zip(COLOURS, self.colour_ports, strict=True):
            if port == colour_port:
                return self.layout.colour_unit(colour)
        loaded = self.state / "nginx.loaded"  # our site, as nginx last loaded it
        if self.unit("nginx.service").active == "active" and loaded.exists():
            found = re.search(r"server 127\.0\.0\.1:(\d+);", loaded.read_text())
            return self._unit_behind(int(found.group(1))) if found else None
        return self.layout.service

    def answer_for(self, port: int, path: str) -> tuple[int, str] | None:
        unit = self._unit_behind(port)
        if unit is None:
            return None
        state = self.unit(unit)
        if state.active != "active":
            return None
        behaviour = (self.state / "units" / unit / "answer").read_text().strip()
        if path != "/health":
            return 404, "not found"
        if behaviour == "healthy":
            return 200, f"release {state.release}"
        if behaviour == "unhealthy":
            return 500, f"release {state.release}: model failed to load"
        return None
