"""The model files of a release (its models.toml, checked on the deployer): fetched by the host
itself into a store shared by every release, verified, and linked for the release to open.

    app_root/models/blobs/<sha256>            each file once, 0640 root:app_group, after its
    app_root/models/blobs/<sha256>.verified   sha256 matched (the record written after that)
    releases/<id>/models/<name>/<path>        links to ../../(..)/models/blobs/<sha256>
    releases/<id>/.ai-deploy-models.json      what the release uses (for prune and status)

A release's model files are the bytes its manifest named for as long as it exists: its
models/<name> tree is its own (made before it goes live, never changed by another release's
deploy), and each link names a blob by its sha256, which no name or version can re-point. Two
releases may ship the same name and version with other bytes, or a path that is a file in one and
a directory in the other: each keeps its own. Prune keeps every blob a kept release's record
names. (Releases made before this layout link models/<name> to a shared
app_root/models/<name>/<version>/ directory; prune keeps those while a release links there, and
a new deploy of such a release gives it a tree of its own.) The record is the deploy's: one an
artifact ships is removed when the release is extracted.

The download is model_fetcher.py (with model_store.py) beside this module, copied to
app_root/.ai-deploy-tools/ and run with the host's python3 in the background (a private partial
file per blob, resumed with HTTP Range, free space checked before the first byte, progress in its
log); this side polls the log with short commands, so the lock's lease stays fresh, and says how
it goes. It runs before the release goes live: a file that cannot be fetched or verified stops
the deploy there, and the serving release is untouched. A fetch left by a deploy that died ends
once the lock's lease has gone unrenewed for lock_lease_s, or when the next deploy starts (by its
PID); its partial is kept and resumed."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shlex
import time
from pathlib import Path, PurePosixPath
from typing import Any

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import MODEL_BLOBS, MODEL_STORE, Layout
from ai_deploy.host.release.lock import LEASE_FILE
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.remote import write_script as _write
from ai_deploy.host.settings import Spec

RECORD = ".ai-deploy-models.json"
TOOLS = ".ai-deploy-tools"
SAY_EVERY_S = 5.0
# The host-side program, shipped together: model_fetcher.py imports model_store.py beside it.
_FETCHER, _STORE = (
    Path(__file__).resolve().with_name(n) for n in ("model_fetcher.py", "model_store.py")
)


def release_record(models: tuple[Any, ...]) -> list[dict[str, object]]:
    return [
        {
            "name": m.name,
            "version": m.version,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in m.files],
        }
        for m in models
    ]


def _job(spec: Spec, token: str) -> dict[str, object]:
    files: dict[str, dict[str, object]] = {}
    for m in spec.models:
        for f in m.files:
            files.setdefault(f.sha256, {"sha256": f.sha256, "size": f.size, "url": f.url,
                                        "path": f"{m.name}/{m.version}/{f.path}"})  # fmt: skip
    return {
        "store": spec.layout.model_store_dir,
        "blobs": spec.layout.model_blobs_dir,
        "partial": spec.layout.model_partials_dir,
        "group": spec.app_group,
        "files": list(files.values()),
        "allow_http": spec.models_allow_http,
        "metadata_host": spec.models_metadata_host,
        "gcs_base": spec.models_gcs_url,
        "mode": "fetch",
        "retries": spec.models_fetch_retries,
        "progress_every_s": SAY_EVERY_S,
        "reserve_bytes": spec.models_reserve_bytes,
        "run": token,
    }


def ensure_models(remote: Remote, spec: Spec, workdir: str, *, fresh: bool = False) -> None:
    """Every model file of SPEC's release in the store and verified, linked under WORKDIR.
    With models_verify, the files present are hashed again first and a damaged one dropped,
    so it is fetched again. FRESH: WORKDIR was just extracted from the artifact, so a record
    found there is the artifact's, not the deploy's: it is removed (or replaced)."""
    record = shlex.quote(f"{workdir}/{RECORD}")
    if not spec.models:
        if fresh:
            found = remote.run(
                f"if [ -e {record} ] || [ -L {record} ]; then rm -rf -- {record}; echo gone; fi"
            )
            if found.stdout:
                remote.say(f"the artifact's own {RECORD} was removed (the deploy writes it)")
        return
    if spec.models_verify:
        _run_fetcher(remote, spec, "verify")
    _run_fetcher(remote, spec, "fetch")
    _link(remote, spec, workdir, fresh)


def check_after_failed_start(remote: Remote, spec: Spec) -> None:
    """The release did not start healthy: its model files are hashed again, and a damaged one
    is dropped, so the next deploy fetches it again. Never raises: the failure stands."""
    if not spec.models:
        return
    remote.say("the release failed its health gate: hashing its model files again")
    try:
        _run_fetcher(remote, spec, "verify")
    except DeployFailed as exc:
        remote.warn(f"could not check the model files again: {exc}")


def _run_fetcher(remote: Remote, spec: Spec, mode: str) -> None:
    source, store_source = _FETCHER.read_bytes(), _STORE.read_bytes()
    version = hashlib.sha256(source + store_source).hexdigest()[:12]
    tools = f"{spec.layout.root}/{TOOLS}/fetch_models-{version}"
    fetcher = f"{tools}/{_FETCHER.name}"
    token = secrets.token_hex(4)
    base = spec.layout.model_store
    job, log, rc, pid = (f"{base}/.jobs/{token}{s}" for s in (".json", ".log", ".rc", ".pid"))
    group = shlex.quote(spec.app_group)
    # The fetcher's own pid in PID (a next deploy ends a leftover one by it), a watchdog that
    # ends it when the deploy's lease goes stale (the deploy died), and "EXIT n" last.
    lease = f"{spec.layout.lock}/{LEASE_FILE}"
    watchdog = (
        f'while kill -0 "$f" 2>/dev/null; do sleep 5; t=$(stat -c %Y {lease} 2>/dev/null || '
        f'echo 0); [ $(( $(date +%s) - t )) -gt {int(spec.lock_lease_s)} ] && kill "$f"; done'
    )
    run = (
        f'python3 {fetcher} {job} & f=$!; echo "$f" > {pid}; ({watchdog}) & '
        f'wait "$f"; echo "EXIT $?"'
    )
    start = remote.run(
        f"""set -e
command -v python3 >/dev/null || {{ echo "the model fetch needs python3 on the host" >&2; exit 1; }}
install -d -o root -g root -m 0755 {spec.layout.root}/{TOOLS} {tools}
[ -f {fetcher} ] || {{ {_write(f"{tools}/{_STORE.name}", store_source, "0644")} && \
  {_write(fetcher, source, "0644")}; }}
install -d -o root -g {group} -m 0750 {base} {spec.layout.model_blobs}
install -d -o root -g root -m 0700 {base}/.jobs
for old in {base}/.jobs/*.pid; do
  [ -f "$old" ] || continue
  p=$(cat "$old"); if [ -n "$p" ] && grep -q fetch_models "/proc/$p/cmdline" 2>/dev/null; then
    kill "$p" 2>/dev/null || true; echo "stopped the fetch a stopped deploy left (pid $p)"
    n=0; while [ -d "/proc/$p" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
  fi
  rm -f "$old"
done
find {base}/.jobs -type f -mmin +1440 -delete
{_write(job, json.dumps({**_job(spec, token), "mode": mode}).encode(), "0600")}
setsid sh -c {shlex.quote(run)} </dev/null >{log} 2>&1 &
"""
    )
    for line in start.stdout:
        remote.say(line)
    if not start.ok:
        raise DeployFailed("models", f"could not start the model fetch:\n{tail(start.stderr)}")
    status, lines = _wait(remote, spec, log, pid)
    remote.run(f"rm -f {job} {pid} {rc}")
    if status != "0":
        raise DeployFailed("models", _failure(status, lines), journal=f"models-failed rc={status}")


def _wait(remote: Remote, spec: Spec, log: str, pid: str) -> tuple[str, list[str]]:
    """Poll the fetch until its exit status is in its log ("EXIT n"); say what it does."""
    started = last_said = time.monotonic()
    seen = 0
    pause = 0.05
    while True:
        lines = remote.run(f"cat {log} 2>/dev/null").stdout
        for line in lines[seen:]:
            if line.startswith(
                ("DONE ", "PRESENT ", "NOSPACE", "MISMATCH", "ERROR", "VERIFIED ", "DAMAGED ")
            ):
                remote.say(f"models: {line}")
        progress = [x for x in lines if x.startswith("PROGRESS ")]
        seen = len(lines)
        now = time.monotonic()
        if progress and now - last_said >= SAY_EVERY_S:
            remote.say(f"models: {_progress(progress[-1])}")
            last_said = now
        ends = [x for x in lines if x.startswith("EXIT ")]
        if ends:
            return ends[-1].split()[1], lines
        if now - started > spec.models_fetch_timeout_s:
            remote.run(f'kill "$(cat {pid})" 2>/dev/null || true')
            return "timeout", [*lines, f"(no result after {spec.models_fetch_timeout_s:.0f} s)"]
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def _progress(line: str) -> str:
    """`PROGRESS sha path bytes total rate eta` as words."""
    parts = line.split()
    if len(parts) < 7:
        return line
    _, _, path, done, total, rate, eta = parts[:7]
    try:
        d, t, r, e = int(done), int(total), float(rate), float(eta)
    except ValueError:
        return line
    return f"{path}: {d / 2**20:.0f} of {t / 2**20:.0f} MiB, {r / 2**20:.1f} MiB/s, {e:.0f} s left"


def _failure(status: str, lines: list[str]) -> str:
    said = [x for x in lines if x.startswith(("NOSPACE", "MISMATCH", "ERROR"))]
    if status == "3" and said:
        return f"not enough disk for the model files, nothing fetched: {said[-1]}"
    if status == "4" and said:
        return (
            f"a model file did not match its sha256 (its partial download was removed): {said[-1]}"
        )
    why = said[-1] if said else tail(lines)
    return f"the model files could not be fetched (exit {status}): {why}"


def _link(remote: Remote, spec: Spec, workdir: str, fresh: bool) -> None:
    """WORKDIR/models/<name>/<path> -> the blob of the sha256 the manifest names, for every file:
    a tree of the release's own, with links already right left as they are; a path a directory
    holds is refused (ln -T), never given a link inside it. Then the release's record."""
    group = shlex.quote(spec.app_group)
    top = f"{workdir}/models"
    script = ["set -e", f"install -d -o root -g {group} -m 0750 {shlex.quote(top)}"]
    for m in spec.models:
        tree = shlex.quote(f"{top}/{m.name}")
        # A release made before this layout links it to a version directory other releases share.
        script.append(f"[ ! -L {tree} ] || rm -f -- {tree}")
        dirs = sorted({str(PurePosixPath(top, m.name, f.path).parent) for f in m.files})
        script.append(f"install -d -o root -g {group} -m 0750 {' '.join(map(shlex.quote, dirs))}")
        for f in m.files:
            # From the link's directory up to app_root: the path's own dirs, then <name>,
            # models, <id>, releases.
            target = "../" * (f.path.count("/") + 4) + f"{MODEL_STORE}/{MODEL_BLOBS}/{f.sha256}"
            link = shlex.quote(f"{top}/{m.name}/{f.path}")
            script.append(f'[ "$(readlink -- {link})" = {target} ] || ln -sfT {target} {link}')
    record = f"{workdir}/{RECORD}"
    data = json.dumps(release_record(spec.models)).encode()
    if fresh:  # one the artifact shipped, whatever it is
        script.append(f"rm -rf -- {shlex.quote(record)}")
    script.append(
        f"printf '%s' {base64.b64encode(data).decode()} | base64 -d | "
        f"cmp -s - {shlex.quote(record)} 2>/dev/null || "
        f"{{ {_write(shlex.quote(record), data, '0644')}; }}"
    )
    done = remote.run("\n".join(script))
    if not done.ok:
        raise DeployFailed("models", f"could not link the model files:\n{tail(done.stderr)}")


MARK = "AI-DEPLOY-MODELS"


def models_script(layout: Layout) -> str:
    """Shell printing each kept release's models record, where each file in its models/ tree
    leads (links followed), and the verified files in the store (for parse_models)."""
    return f"""cd {layout.releases} 2>/dev/null || exit 0
for id in *; do
  [ -f "$id/{RECORD}" ] || continue
  echo "{MARK} models $id $(tr -d '\\n' < "$id/{RECORD}")"
  find -L "$id/models" -type f 2>/dev/null | while IFS= read -r f; do
    printf '%s\\t%s\\n' "{MARK} file $f" "$(readlink -f -- "$f")"
  done
done
for v in {layout.model_blobs}/*.verified; do [ -e "$v" ] && echo "{MARK} verified ${{v##*/}}"; done
true
"""


def parse_models(lines: list[str]) -> dict[str, tuple[dict[str, Any], ...]]:
    """Each release's models from models_script's lines: name, version, size, and whether each
    file of it is in the store, verified, and what the release's own link leads to. A record
    that is not the deploy's shape never raises: what cannot be read is not verified."""
    verified: set[str] = set()
    leads: dict[str, str] = {}  # <id>/models/<name>/<path> -> the blob's sha256 it leads to
    records: dict[str, Any] = {}
    for line in lines:
        if not line.startswith(f"{MARK} "):
            continue
        kind, _, rest = line.removeprefix(f"{MARK} ").partition(" ")
        if kind == "verified":
            verified.add(rest.strip().removesuffix(".verified"))
        elif kind == "file":
            path, _, target = rest.partition("\t")
            folder, _, sha = target.rpartition("/")
            leads[path] = sha if folder.endswith(f"/{MODEL_STORE}/{MODEL_BLOBS}") else ""
        elif kind == "models":
            release, _, text = rest.partition(" ")
            try:
                records[release] = json.loads(text)
            except ValueError:
                continue
    found: dict[str, tuple[dict[str, Any], ...]] = {}
    for release, record in records.items():
        models = record if isinstance(record, list) else []
        rows = [_model_row(release, m, verified, leads) for m in models if isinstance(m, dict)]
        found[release] = tuple(rows)
    return found


def _model_row(
    release: str, model: dict[str, Any], verified: set[str], leads: dict[str, str]
) -> dict[str, Any]:
    files = model.get("files") if isinstance(model.get("files"), list) else []
    sizes = [f.get("size") if isinstance(f, dict) else None for f in files]
    known = [n for n in sizes if type(n) is int and n >= 0]

    def good(f: Any) -> bool:
        if not isinstance(f, dict) or f.get("sha256") not in verified:
            return False
        return leads.get(f"{release}/models/{model.get('name')}/{f.get('path')}") == f["sha256"]

    return {
        "name": str(model.get("name")),
        "version": str(model.get("version")),
        "size_bytes": sum(known),
        "verified": bool(files) and len(known) == len(files) and all(map(good, files)),
    }
