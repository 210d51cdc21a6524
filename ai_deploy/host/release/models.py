"""The model files of a release (its models.toml, checked on the deployer): fetched by the host
itself into a store shared by every release, verified, and linked for the release to open.

    app_root/models/blobs/<sha256>          each file once, 0640 root:app_group, after its
    app_root/models/blobs/<sha256>.verified  sha256 matched (the record written after that)
    app_root/models/<name>/<version>/<path>  links to ../blobs/<sha256>
    releases/<id>/models/<name>              link to the model's version directory
    releases/<id>/.ai-deploy-models.json     what the release uses (for prune and status)

The download is ai_deploy/models/fetcher.py, copied to app_root/.ai-deploy-tools/ and run with
the host's python3 in the background (a private partial file per blob, resumed with HTTP Range,
free space checked before the first byte, progress in its log); this side polls the log with
short commands, so the lock's lease stays fresh, and says how it goes. It runs before the
release goes live: a file that cannot be fetched or verified stops the deploy there, and the
serving release is untouched. A fetch left by a deploy that died ends once the lock's lease has
gone unrenewed for lock_lease_s, or when the next deploy starts (by its PID); its partial is
kept and resumed."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

from ai_deploy.host.outcome import DeployFailed
from ai_deploy.host.paths import Layout
from ai_deploy.host.release.lock import LEASE_FILE
from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec

RECORD = ".ai-deploy-models.json"
TOOLS = ".ai-deploy-tools"
SAY_EVERY_S = 5.0
_FETCHER = Path(__file__).resolve().parents[2] / "models" / "fetcher.py"


def store(spec: Spec) -> str:
    return f"{spec.layout.root}/models"


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
        "store": store(spec),
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


def _write(path: str, data: bytes, mode: str) -> str:
    """Shell writing DATA to PATH (mode MODE, root's), atomically."""
    blob = base64.b64encode(data).decode()
    q = shlex.quote(path)
    return (
        f"printf '%s' {blob} | base64 -d > {q}.tmp && chmod {mode} {q}.tmp && "
        f"chown root:root {q}.tmp && mv -f {q}.tmp {q}"
    )


def ensure_models(remote: Remote, spec: Spec, workdir: str) -> None:
    """Every model file of SPEC's release in the store and verified, linked under WORKDIR.
    With models_verify, the files present are hashed again first and a damaged one dropped,
    so it is fetched again."""
    if not spec.models:
        return
    if spec.models_verify:
        _run_fetcher(remote, spec, "verify")
    _run_fetcher(remote, spec, "fetch")
    _link(remote, spec, workdir)


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
    source = _FETCHER.read_bytes()
    fetcher = (
        f"{spec.layout.root}/{TOOLS}/fetch_models-{hashlib.sha256(source).hexdigest()[:12]}.py"
    )
    token = secrets.token_hex(4)
    base = store(spec)
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
install -d -o root -g root -m 0755 {spec.layout.root}/{TOOLS}
[ -f {fetcher} ] || {{ {_write(fetcher, source, "0644")}; }}
install -d -o root -g {group} -m 0750 {base} {base}/blobs
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


def _link(remote: Remote, spec: Spec, workdir: str) -> None:
    """models/<name>/<version>/<path> -> blobs, WORKDIR/models/<name> -> that version, and the
    release's record of what it uses."""
    base = store(spec)
    group = shlex.quote(spec.app_group)
    script = ["set -e", f"install -d -o root -g {group} -m 0750 {shlex.quote(workdir)}/models"]
    for m in spec.models:
        version = f"{base}/{m.name}/{m.version}"
        for f in m.files:
            target = f"{version}/{f.path}"
            up = "../" * (f.path.count("/") + 2)
            script += [
                f"install -d -o root -g {group} -m 0750 {shlex.quote(str(Path(target).parent))}",
                f"ln -sfn {up}blobs/{f.sha256} {shlex.quote(target)}",
            ]
        script.append(
            f"ln -sfn ../../../models/{m.name}/{m.version} {shlex.quote(workdir)}/models/{m.name}"
        )
    record = json.dumps(release_record(spec.models)).encode()
    script.append(_write(f"{workdir}/{RECORD}", record, "0644"))
    done = remote.run("\n".join(script))
    if not done.ok:
        raise DeployFailed("models", f"could not link the model files:\n{tail(done.stderr)}")


MARK = "AI-DEPLOY-MODELS"


def models_script(layout: Layout) -> str:
    """Shell printing each kept release's models record and the verified files in the store
    (for parse_models)."""
    r = layout.root
    return f"""cd {layout.releases} 2>/dev/null || exit 0
for id in *; do
  [ -f "$id/{RECORD}" ] && echo "{MARK} models $id $(tr -d '\\n' < "$id/{RECORD}")"
done
for v in {r}/models/blobs/*.verified; do [ -e "$v" ] && echo "{MARK} verified ${{v##*/}}"; done
true
"""


def parse_models(lines: list[str]) -> dict[str, tuple[dict[str, Any], ...]]:
    """Each release's models from list_script's lines: name, version, size, and whether every
    file of it is in the store, verified."""
    verified = {
        line.split()[2].removesuffix(".verified")
        for line in lines
        if line.startswith(f"{MARK} verified ")
    }
    found: dict[str, tuple[dict[str, Any], ...]] = {}
    for line in lines:
        if not line.startswith(f"{MARK} models "):
            continue
        _, _, release, text = line.split(" ", 3)
        try:
            record = json.loads(text)
        except ValueError:
            continue
        found[release] = tuple(
            {
                "name": m.get("name"),
                "version": m.get("version"),
                "size_bytes": sum(int(f.get("size", 0)) for f in m.get("files", [])),
                "verified": all(f.get("sha256") in verified for f in m.get("files", [])),
            }
            for m in record
            if isinstance(m, dict)
        )
    return found
