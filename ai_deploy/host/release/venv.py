"""venvs/<lock hash>: one venv per distinct uv.lock, shared by the releases that have that lock.

It holds the locked dependencies only (`--no-install-project`): the app's own code is imported
from each release (its root, then src/: ai_deploy.artifact.importpath), which is what lets
releases with the same lock share it whatever the app's layout.

A venv is built by the unprivileged build user (building a package runs its code), aside in
venvs/.build-<hash>-<token>, in the background with its output in a log that is polled with
short commands (so the caller's lock lease stays fresh); then, as root, it is made root's and
read-only for everyone else, its origin (lock hash, Python, uv) and a manifest of its files are
recorded, and it is renamed into place (an atomic exchange when a damaged one is there).

Before a release goes live its venv is verified against that record (about 10 ms for the
example app's 1,000 files); a damaged one is rebuilt aside and swapped in, so venvs/<hash>
never disappears while a kept release links to it."""

from __future__ import annotations

import re
import secrets
import shlex
import time
from dataclasses import dataclass

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import VENV_COMPLETE
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec

VENV_RECORD = ".ai-deploy-venv"  # key=value: lock, python, uv, manifest (sha256), files, built_by
VENV_MANIFEST = ".ai-deploy-manifest"  # the listing the manifest hash was taken of
UV_CACHE_ROOT = "/var/cache/ai-deploy"  # uv-<build user> below it, 0700, the build user's
BUILD_TIMEOUT_S = 3600.0
SAY_EVERY_S = 10.0
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")

# Exchange two paths in one rename(2) (renameat2 RENAME_EXCHANGE): a damaged venv is replaced
# without a moment in which venvs/<hash> does not exist.
_EXCHANGE = (
    "import ctypes,os,sys; c=ctypes.CDLL(None,use_errno=True); "
    "sys.exit(c.renameat2(-100,os.fsencode(sys.argv[1]),-100,os.fsencode(sys.argv[2]),2)!=0)"
)


def listing(venv: str) -> str:
    """Shell printing the manifest listing of VENV (a shell word): one sorted line per file
    below it with type, mode, owner, size, mtime and link target; the record files excluded."""
    return (
        f"find {venv} -mindepth 1 -printf '%P %y %m %U:%G %s %T@ %l\\n' "
        f"| grep -v '^\\.ai-deploy-[^/ ]* ' | LC_ALL=C sort"
    )


def venv_lines(venvs: str) -> str:
    """Shell for the tree fact: `venv <hash>` for each venv under VENVS that is complete and
    matches its manifest (or has none: built before manifests), `venv_damaged <hash>` for a
    complete one that does not."""
    return f"""if [ -d {venvs} ]; then
  for v in {venvs}/*/{VENV_COMPLETE}; do
    [ -e "$v" ] || continue
    d=${{v%/*}}; h=${{d##*/}}
    if [ -f "$d/{VENV_RECORD}" ] && [ "$({listing('"$d"')} | sha256sum | cut -d' ' -f1)" != \
"$(sed -n 's/^manifest=//p' "$d/{VENV_RECORD}")" ]; then
      echo "venv_damaged $h"
    else
      echo "venv $h"
    fi
  done
fi"""


@dataclass(frozen=True)
class Check:
    """What verifying venvs/<hash> found: ok, or why not (and whether the directory exists)."""

    ok: bool
    exists: bool
    reason: str


def _python_of(venv: str) -> str:
    """Shell printing the venv's interpreter (resolved) and its version, or nothing."""
    return (
        f'py=$(readlink -f {venv}/bin/python) && [ -x "$py" ] && '
        f'printf "%s %s" "$py" "$("$py" --version 2>&1)"'
    )


def verify_venv(remote: Remote, spec: Spec, lock_hash: str) -> Check:
    """Check venvs/LOCK_HASH against what was recorded when it was built: the marker, the lock
    hash, the interpreter and uv versions, and the manifest of its files (sizes, mtimes, modes,
    owners). Reads only; runs no code from the venv."""
    venv = spec.layout.venv(lock_hash)
    rec = f"{venv}/{VENV_RECORD}"
    uv = shlex.quote(spec.uv_path)
    script = f"""
[ -d {venv} ] || {{ echo missing; exit 0; }}
[ -e {venv}/{VENV_COMPLETE} ] || {{ echo "damaged: its completion marker is missing"; exit 0; }}
[ -f {rec} ] || {{ echo "damaged: it has no build record (built by an older deploy)"; exit 0; }}
get() {{ sed -n "s/^$1=//p" {rec}; }}
bad() {{ echo "damaged: $1"; exit 0; }}
[ "$(get lock)" = {shlex.quote(lock_hash)} ] || bad "built for lock $(get lock)"
py=$({_python_of(venv)})
[ "$py" = "$(get python)" ] || bad "its Python is now '$py', built with '$(get python)'"
uvv=$({uv} --version 2>&1)
[ "$uvv" = "$(get uv)" ] || bad "uv is now '$uvv', built with '$(get uv)'"
now=$(mktemp); trap 'rm -f "$now"' EXIT
{listing(venv)} > "$now"
if [ "$(sha256sum < "$now" | cut -d' ' -f1)" != "$(get manifest)" ]; then
  changed=$(LC_ALL=C comm -3 {venv}/{VENV_MANIFEST} "$now" | sed 's/^\\t//' | cut -d' ' -f1 \
| LC_ALL=C sort -u | head -n 3 | tr '\\n' ' ')
  echo "damaged: its files differ from the manifest (${{changed:-the manifest itself}})"
  exit 0
fi
echo ok
"""
    out = remote.run(script).stdout
    line = out[-1].strip() if out else "damaged: it could not be checked"
    if line == "ok":
        return Check(True, True, "verified against its manifest")
    if line == "missing":
        return Check(False, False, "not built yet")
    return Check(False, True, line.removeprefix("damaged: "))


def ensure_venv(
    remote: Remote, spec: Spec, lock_hash: str, workdir: str, cleanup: str | None
) -> None:
    """venvs/<lock_hash> complete and verified; built (or rebuilt aside and swapped in, when
    damaged) from WORKDIR's uv.lock by the build user. On failure CLEANUP is removed and
    venvs/<lock_hash> is left as it was."""
    started = time.monotonic()
    check = verify_venv(remote, spec, lock_hash)
    if check.ok:
        remote.say(
            f"venv {lock_hash[:12]} is ready (uv.lock unchanged): no sync; verified against "
            f"its manifest in {(time.monotonic() - started) * 1000:.0f} ms"
        )
        return
    if check.exists:
        remote.warn(f"venv {lock_hash[:12]} is damaged ({check.reason}): rebuilding it aside")
    remote.say(
        f"building venv {lock_hash[:12]} with uv sync --frozen as {spec.build_user} "
        "(the service keeps serving)"
    )
    try:
        _build(remote, spec, lock_hash, workdir)
    except DeployFailed:
        if cleanup:
            remote.run(f"rm -rf {cleanup}")
        raise
    remote.say(f"venv {lock_hash[:12]} built in {time.monotonic() - started:.1f} s")


def ensure_release_venv(remote: Remote, spec: Spec, release_id: str) -> None:
    """The venv RELEASE_ID links to verified, or rebuilt from the release's own uv.lock (for a
    switch-back: the release is started again only on a venv that checks out)."""
    release = spec.layout.release(release_id)
    out = remote.run(f"readlink {release}/.venv").stdout
    lock_hash = out[0].strip().rsplit("/", 1)[-1] if out else ""
    if not lock_hash:
        raise DeployFailed("venv", f"release {release_id} has no .venv link")
    ensure_venv(remote, spec, lock_hash, release, None)


def uv_cache_dir(spec: Spec) -> str:
    """The build user's uv cache: UV_CACHE_DIR from uv_env, else UV_CACHE_ROOT/uv-<user>."""
    return spec.uv_env.get("UV_CACHE_DIR") or f"{UV_CACHE_ROOT}/uv-{spec.build_user}"


def _build(remote: Remote, spec: Spec, lock_hash: str, workdir: str) -> None:
    user = spec.build_user
    if not _USER.match(user):
        raise DeployFailed("venv", f"build_user {user!r} is not a valid user name")
    venvs = spec.layout.venvs
    name = f".build-{lock_hash}-{secrets.token_hex(4)}"
    build, log, pid, rc = (f"{venvs}/{shlex.quote(name + s)}" for s in ("", ".log", ".pid", ".rc"))
    cache = shlex.quote(uv_cache_dir(spec))
    parent = (
        f"install -d -o root -g root -m 0755 {shlex.quote(UV_CACHE_ROOT)}"
        if uv_cache_dir(spec).startswith(f"{UV_CACHE_ROOT}/")
        else f'mkdir -p "$(dirname {cache})"'
    )
    env = " ".join(
        f"{k}={shlex.quote(str(v))}"
        for k, v in {
            "UV_PYTHON_DOWNLOADS": spec.uv_python_downloads,
            **spec.uv_env,
            "UV_CACHE_DIR": uv_cache_dir(spec),
            "UV_LINK_MODE": "copy",  # no inode shared with the build user's cache
            "HOME": uv_cache_dir(spec),
            "UV_PROJECT_ENVIRONMENT": f"{spec.app_root}/venvs/{name}",
        }.items()
    )
    uv, py = shlex.quote(spec.uv_path), shlex.quote(spec.uv_python)
    # Relocatable: entry points (bin/uvicorn) find their python relative to themselves, so the
    # venv works after the rename from .build-* to venvs/<hash>.
    job = (
        f"echo $$ > {pid}; "
        f"$as env {env} {uv} venv --relocatable --python {py} {build} && "
        # No --python here: the venv made just above is the interpreter, and a request that
        # names another path for it (a wrapper script) would make uv recreate the venv, which
        # the build user may not do in venvs/.
        f"$as env {env} {uv} sync --frozen --no-install-project --no-dev --compile-bytecode"
        f"; echo $? > {rc}.tmp && mv {rc}.tmp {rc}"
    )
    start = remote.run(
        f"""set -e
{_clean_builds(venvs)}
id -u {user} >/dev/null 2>&1 || {{ echo "the build user {user} does not exist" >&2; exit 1; }}
if [ "$(id -un)" = {user} ]; then as=; else as="runuser -u {user} --"; fi
export as
mkdir -p {venvs}
{parent}
install -d -o {user} -g "$(id -gn {user})" -m 0700 {cache}
mkdir -m 0755 {build} && chown {user}: {build}
cd {workdir}
$as test -r {workdir}/uv.lock -a -w {build} ||
  {{ echo "{user} cannot read uv.lock in the release or write {build}" >&2; exit 1; }}
setsid sh -c {shlex.quote(job)} </dev/null >{log} 2>&1 &
"""
    )
    if not start.ok:
        remote.run(_clean_builds(venvs))
        raise DeployFailed(
            "venv", f"could not start uv sync as {user}:\n{tail(start.stdout + start.stderr)}"
        )
    status, lines = _wait(remote, spec, lock_hash, log, rc)
    if status != "0":
        remote.run(_clean_builds(venvs))
        raise DeployFailed(
            "venv",
            "uv sync --frozen failed; the running release is untouched. Last lines:\n"
            + tail(lines),
        )
    done = remote.run(_finish(spec, lock_hash, build, pid))
    remote.run(_clean_builds(venvs))
    if not done.ok:
        raise DeployFailed(
            "venv", f"could not put the built venv in place:\n{tail(done.stdout + done.stderr)}"
        )


def _wait(remote: Remote, spec: Spec, lock_hash: str, log: str, rc: str) -> tuple[str, list[str]]:
    """Poll the background build with short commands until it wrote its exit status: (status,
    the log's last lines). Says how it goes about every SAY_EVERY_S."""
    started = last_said = time.monotonic()
    pause = 0.05
    while True:
        out = remote.run(f"cat {rc} 2>/dev/null || echo running; tail -n 15 {log} 2>/dev/null")
        status = out.stdout[0].strip() if out.stdout else "running"
        lines = out.stdout[1:]
        if status != "running":
            return status, lines
        now = time.monotonic()
        if now - started > BUILD_TIMEOUT_S:
            return "timeout", [*lines, f"(no result after {BUILD_TIMEOUT_S:.0f} s: stopped)"]
        if now - last_said >= SAY_EVERY_S:
            last = lines[-1].strip() if lines else "(no output yet)"
            remote.say(f"venv {lock_hash[:12]}: uv sync running for {now - started:.0f} s: {last}")
            last_said = now
        time.sleep(pause)
        pause = min(pause * 2, 3.0)


def _finish(spec: Spec, lock_hash: str, build: str, pid: str) -> str:
    """Shell, as root: stop what the build left running, make the venv root's and read-only for
    others, record its origin and manifest, and rename it into place."""
    venv = spec.layout.venv(lock_hash)
    uv = shlex.quote(spec.uv_path)
    return f"""set -e
p=$(cat {pid} 2>/dev/null || true); [ -z "$p" ] || kill -KILL "-$p" 2>/dev/null || true
by=$(stat -c %U {build}/pyvenv.cfg 2>/dev/null || echo unknown)
chown -R root:root {build}
chmod -R go-w {build}
[ -x {build}/bin/python ] || {{ echo "the build has no bin/python" >&2; exit 1; }}
touch {build}/{VENV_COMPLETE}
{listing(build)} > {build}/{VENV_MANIFEST}
{{
  echo lock={shlex.quote(lock_hash)}
  echo "python=$({_python_of(build)})"
  echo "uv=$({uv} --version 2>&1)"
  echo "manifest=$(sha256sum < {build}/{VENV_MANIFEST} | cut -d' ' -f1)"
  echo "files=$(wc -l < {build}/{VENV_MANIFEST})"
  echo "built_by=$by"
}} > {build}/{VENV_RECORD}
chmod 0644 {build}/{VENV_MANIFEST} {build}/{VENV_RECORD}
if [ -e {venv} ] || [ -L {venv} ]; then
  python3 -c {shlex.quote(_EXCHANGE)} {build} {venv} ||
    {{ mv -T {venv} {build}.old && mv -T {build} {venv} && mv -T {build}.old {build}; }}
else
  mv -T {build} {venv}
fi
"""


def _clean_builds(venvs: str) -> str:
    """Shell: stop and remove every build aside under VENVS (a failed or interrupted one, or the
    damaged venv a rebuild replaced); the lock means none of them is another deploy's."""
    return f"""for p in {venvs}/.build-*.pid; do
  [ -f "$p" ] || continue
  kill -KILL "-$(cat "$p")" 2>/dev/null || true
done
rm -rf {venvs}/.build-*
"""
