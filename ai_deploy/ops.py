"""pyinfra operations of this project: a secret file whose content is never shown, and a
release put in service behind the health gate (ai_deploy.gate)."""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.util import format_exception
from pyinfra.facts.files import File, Sha256File

from ai_deploy import gate
from ai_deploy.facts import AppTreeFact


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


class _PyinfraRemote:
    """gate.Remote over a pyinfra host: every command as root through sudo."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def run(self, script: str, *, timeout: float | None = None) -> gate.Result:
        ok, output = self.host.run_shell_command(
            StringCommand(script), _sudo=True, _timeout=timeout or 600
        )
        return gate.Result(ok, list(output.stdout_lines), list(output.stderr_lines))

    def say(self, message: str) -> None:
        for line in message.splitlines():
            logger.info(f"{self.host.print_prefix}{line}")

    def warn(self, message: str) -> None:
        for line in message.splitlines():
            logger.warning(f"{self.host.print_prefix}{line}")


def _put_in_service(state: Any, host: Any, spec: gate.Spec, have_release: bool) -> bool:
    remote = _PyinfraRemote(host)
    try:
        outcome = gate.put_in_service(remote, spec, have_release=have_release)
    except gate.DeployFailed as exc:
        host.log_styled(f"{exc.phase} failed: {exc}", fg="red", log_func=logger.error)
        return False
    except Exception as exc:  # report any surprise the same way, naming it
        host.log_styled(
            f"unexpected error putting {spec.release_id} in service: {format_exception(exc)}",
            fg="red",
            log_func=logger.error,
        )
        return False
    remote.say(outcome)
    return True


@operation()
def release_in_service(spec: gate.Spec, restart: bool = False):
    """
    Ensure release SPEC.release_id is what `current` points at and that the service is
    running it healthily; does nothing when that is already so and RESTART is false.

    + spec: the gate's settings (ai_deploy.gate.Spec), decided on the deployer
    + restart: the unit or the .env changed, so the running service must restart
    """
    tree = host.get_fact(AppTreeFact, app_root=spec.app_root, service=spec.service, _sudo=True)
    have_release = spec.release_id in tree.releases
    serving = (
        tree.current == spec.release_id
        and have_release
        and tree.venv_ready(spec.release_id)
        and tree.runs_strategy(spec.strategy, spec.service)
    )
    if serving and not restart:
        host.noop(f"release {spec.release_id} is already serving")
        return
    yield FunctionCommand(_put_in_service, (spec, have_release), {})
