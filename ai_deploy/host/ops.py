"""pyinfra operations of this project: a secret file whose content is never shown, and a
release put in service behind the health gate (ai_deploy.host.gate)."""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.util import format_exception
from pyinfra.facts.files import File, Sha256File
from pyinfra.facts.server import Command

from ai_deploy.host import strategies
from ai_deploy.host.event_hooks import ERROR, tell
from ai_deploy.host.events import SAY, HostEvent, send
from ai_deploy.host.facts import AppTree, AppTreeFact
from ai_deploy.host.gate import put_in_service
from ai_deploy.host.outcome import ALREADY_SERVING, FAILED, HostOutcome, report
from ai_deploy.host.remote import PyinfraRemote
from ai_deploy.host.settings import Spec


@operation()
def secret_file(content: bytes, dest: str, user: str, group: str, mode: str = "600"):
    """
    Ensure a file holds CONTENT, written through stdin so that it never sits in a temporary
    file and never shows in output or --diff (only "content changed" is said).

    + content: the bytes the file must hold
    + dest: the file on the host
    + user, group, mode: owner and permissions the file must have
    """
    remote_sum = host.get_fact(Sha256File, path=dest, _sudo=True)
    info = host.get_fact(File, path=dest, _sudo=True)
    want = hashlib.sha256(content).hexdigest()
    q = shlex.quote(dest)
    if remote_sum != want:
        logger.info(f"{host.print_prefix}{dest}: content will change (not shown)")
        yield StringCommand(
            f"sh -c 'umask 077; cat > {q}.tmp && chown {user}:{group} {q}.tmp && "
            f"chmod {mode} {q}.tmp && mv -f {q}.tmp {q}'",
            _stdin=content.decode(),
        )
        return
    assert isinstance(info, dict)
    if info.get("user") != user or info.get("group") != group:
        yield StringCommand(f"chown {user}:{group} {q}")
    if f"{info.get('mode')}" != mode.lstrip("0"):
        yield StringCommand(f"chmod {mode} {q}")
    if (
        info.get("user") == user
        and info.get("group") == group
        and (f"{info.get('mode')}" == mode.lstrip("0"))
    ):
        host.noop(f"{dest} is up to date")


def _put_in_service(state: Any, host: Any, spec: Spec, have_release: bool) -> bool:
    remote = PyinfraRemote(host)
    try:
        result = put_in_service(remote, spec, host=host.name, have_release=have_release)
    except Exception as exc:  # report any surprise as a failure of this host, naming it
        result = HostOutcome(
            host=host.name,
            action=spec.action,
            release=spec.release_id,
            status=FAILED,
            phase="unexpected",
            reason=f"unexpected error putting {spec.release_id} in service: "
            f"{format_exception(exc)}",
        )
    report(result)
    if not result.ok:
        tell(host, f"{result.phase} failed: {result.reason}", ERROR)
    return result.ok


@operation()
def release_in_service(spec: Spec, restart: bool = False):
    """
    Ensure release SPEC.release_id is what `current` points at, recorded healthy, with the
    service running it in SPEC.strategy's steady state; does nothing when that is already so
    and RESTART is false.

    + spec: the gate's settings (ai_deploy.host.settings.Spec), decided on the deployer
    + restart: the unit or the .env changed, so the running service must restart
    """
    tree = host.get_fact(AppTreeFact, app_root=spec.app_root, service=spec.service, _sudo=True)
    have_release = spec.release_id in tree.releases
    serving = (
        tree.current == spec.release_id
        and have_release
        and tree.is_healthy(spec.release_id)
        and tree.venv_ready(spec.release_id)
        and strategies.get(spec.strategy).is_steady(tree, spec.layout)
        and not (spec.models_verify and spec.models)  # its model files are checked again
    )
    if serving and not restart:
        report(
            HostOutcome(
                host=host.name,
                action=spec.action,
                release=spec.release_id,
                status=ALREADY_SERVING,
                serving=spec.release_id,
                previous=tree.current,
            )
        )
        host.noop(f"release {spec.release_id} is already serving")
        send(HostEvent(host.name, SAY, f"release {spec.release_id} is already serving"))
        return
    tell(host, _plan(spec, tree, have_release, restart))
    yield FunctionCommand(_put_in_service, (spec, have_release), {})


def _plan(spec: Spec, tree: AppTree, have_release: bool, restart: bool) -> str:
    """What putting SPEC in service will do, for the plan pyinfra prints before the run."""
    if tree.current == spec.release_id:
        what = f"release {spec.release_id} restarts behind the health gate"
        if not tree.is_healthy(spec.release_id):
            what += " (it has not passed the gate: an interrupted deploy)"
        elif restart:
            what += " (its unit or .env changed)"
        else:
            what += " (not in its steady state)"
    else:
        what = (
            f"release {spec.release_id} goes live by {spec.strategy} "
            f"(serving now: {tree.current or 'nothing'}), behind the health gate"
        )
    source = "is on the host" if have_release else "is extracted from the artifact"
    lock_hash = spec.lock_hash or tree.release_venvs.get(spec.release_id)
    if lock_hash and lock_hash in tree.venvs:
        venv = f"venv {lock_hash[:12]} is ready (no uv sync)"
    elif lock_hash:
        venv = f"venv {lock_hash[:12]} will be built (uv sync)"
    else:
        venv = "its venv is checked"
    return f"plan: {what}; the release {source}; {venv}{_models_plan(spec)}"


def _models_plan(spec: Spec) -> str:
    """Which of the release's model files the host must fetch, and how many bytes."""
    if not spec.models:
        return ""
    sizes = {f.sha256: f.size for m in spec.models for f in m.files}
    listed = host.get_fact(
        Command, f"ls -1 {spec.layout.model_blobs} 2>/dev/null || true", _sudo=True
    )
    verified = {
        n[: -len(".verified")] for n in str(listed or "").split() if n.endswith(".verified")
    }
    missing = {sha: n for sha, n in sizes.items() if sha not in verified}
    if not missing:
        return f"; its {len(sizes)} model file(s) are present"
    return (
        f"; {len(missing)} of its {len(sizes)} model file(s) will be fetched "
        f"({sum(missing.values())} bytes)"
    )
