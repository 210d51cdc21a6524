"""`ai-deploy deploy`: everything the CI job does around the pyinfra run.

Phases, each in its own log group: check the artifact, authenticate to GCP, find the runner's
address, look up the instance's external address, open the firewall window, authorize an
ephemeral SSH key and wait for it to work, run pyinfra, check health from outside, and on an
outside health failure roll back through the same window. The window and the key are context
managers on one stack, so they are removed on every way out, SIGTERM and SIGINT included.
Notifications and the job summary come last and never change the outcome.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import requests

from ai_deploy import ci_output
from ai_deploy.artifact import ArtifactError
from ai_deploy.artifact_check import check_artifact
from ai_deploy.notify import DeployEvent, Outcome, notify
from ai_deploy.remote import project_dir, pyinfra_command, resolve_inventory

EXIT_OK = 0
EXIT_CONFIG = 2  # bad artifact or settings: nothing was touched
EXIT_AUTH = 10
EXIT_RUNNER_IP = 11
EXIT_FIREWALL = 12
EXIT_SSH = 13
EXIT_DEPLOY = 14  # pyinfra failed (the health gate on the host may have switched back)
EXIT_HEALTH = 15  # the outside health check failed; the previous release was put back
EXIT_ROLLBACK = 16  # the outside health check failed and so did putting the previous one back

EXIT_CODES = {
    "artifact": EXIT_CONFIG,
    "config": EXIT_CONFIG,
    "auth": EXIT_AUTH,
    "runner-ip": EXIT_RUNNER_IP,
    "instance": EXIT_AUTH,
    "firewall": EXIT_FIREWALL,
    "ssh": EXIT_SSH,
    "deploy": EXIT_DEPLOY,
    "health": EXIT_HEALTH,
    "rollback": EXIT_ROLLBACK,
}


class PhaseFailed(Exception):
    """A phase ended the deploy; `phase` names it (see EXIT_CODES)."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


@dataclass
class DeployOptions:
    artifact: Path
    inventory: str | None = None  # default inventories/prod.py (hosts come through env)
    host: str | None = None  # a plain address: no instance lookup
    project: str | None = None
    zone: str | None = None
    instance: str | None = None
    use_gcp: bool = True  # False: no auth, no firewall window, no ephemeral key
    target_tag: str = "ai-server"
    network: str = "default"
    rule_prefix: str = "ai-deploy-ssh-"
    stale_rule_minutes: int = 60
    port: int = 8000
    health_path: str = "/health"
    health_attempts: int = 12
    health_interval_s: float = 5.0
    health_timeout_s: float = 5.0
    ssh_wait_s: float = 180.0
    dry_run: bool = False
    data: list[str] = field(default_factory=list)

    @classmethod
    def from_env(
        cls, artifact: Path, env: Mapping[str, str] | None = None, **kw: object
    ) -> DeployOptions:
        e = os.environ if env is None else env
        opts = cls(
            artifact=artifact,
            project=e.get("GCP_PROJECT_ID") or None,
            zone=e.get("GCP_ZONE") or None,
            instance=e.get("GCP_INSTANCE") or None,
            target_tag=e.get("AI_DEPLOY_TARGET_TAG", "ai-server"),
            network=e.get("AI_DEPLOY_NETWORK", "default"),
            port=int(e.get("AI_DEPLOY_PORT", "8000")),
            health_attempts=int(e.get("AI_DEPLOY_HEALTH_ATTEMPTS", "12")),
            health_interval_s=float(e.get("AI_DEPLOY_HEALTH_INTERVAL_S", "5")),
        )
        for key, value in kw.items():
            if value is not None:
                setattr(opts, key, value)
        return opts


def _say(message: str) -> None:
    print(message, flush=True)


def wait_for_ssh(address: str, user: str, key: Path, known_hosts: Path, wait_s: float) -> None:
    """Until `ssh USER@ADDRESS true` works with KEY (the guest agent adds keys asynchronously)."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    last = ""
    while True:
        attempt += 1
        proc = subprocess.run(
            [
                "ssh",
                "-i",
                str(key),
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "LogLevel=ERROR",
                f"{user}@{address}",
                "true",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode == 0:
            _say(f"SSH to {user}@{address} works (attempt {attempt})")
            return
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        last = last[0]
        if time.monotonic() >= deadline:
            raise PhaseFailed(
                "ssh",
                f"SSH to {user}@{address} did not work within {wait_s:.0f} s ({last}); check "
                "that the firewall rule's tag matches the instance and that its guest agent runs",
            )
        if attempt == 1 or attempt % 5 == 0:
            _say(f"waiting for SSH to {user}@{address} ({last})")
        time.sleep(2)


def run_pyinfra_streamed(cmd: list[str], env: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run pyinfra with its output streamed live; returns its exit code and last 60 lines.

    SIGTERM/SIGINT reaching this process (raised as an exception) stop pyinfra first, so the
    cleanup that follows does not race a deploy still running."""
    tail: deque[str] = deque(maxlen=60)
    proc = subprocess.Popen(
        cmd,
        cwd=project_dir(),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        with ci_output.commands_stopped():
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                tail.append(line.rstrip("\n"))
        return proc.wait(), list(tail)
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def check_health(url: str, attempts: int, interval_s: float, timeout_s: float) -> tuple[bool, str]:
    """GET URL until it answers 200: at most ATTEMPTS tries, INTERVAL_S apart (seed: 12 x 5 s)."""
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            reply = requests.get(url, timeout=timeout_s)
            if reply.status_code == 200:
                return True, f"{url} answered 200 on attempt {attempt}/{attempts}"
            last = f"answered {reply.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        _say(f"health check {attempt}/{attempts}: {url} {last}")
        if attempt < attempts:
            time.sleep(interval_s)
    return False, f"{url} not healthy after {attempts} attempts ({last})"


def _gate_rolled_back(lines: Sequence[str]) -> bool:
    return any(re.search(r"rolled back to \S+, which is healthy", line) for line in lines)


def run_deploy(opts: DeployOptions, env: Mapping[str, str] | None = None) -> int:
    """The whole CI deploy; returns the exit code (see EXIT_CODES)."""
    environ = dict(os.environ if env is None else env)
    phases = ci_output.Phases()
    started = time.monotonic()
    release = "unknown"
    hosts: list[str] = []
    outcome = Outcome.FAILURE
    message = ""
    code = EXIT_OK
    try:
        with phases.phase("artifact", "Check the artifact"):
            try:
                art = check_artifact(opts.artifact)
            except ArtifactError as exc:
                raise PhaseFailed("artifact", str(exc)) from exc
            release = art.release_id
            _say(f"release {release} ({art.members} members, sha256 {art.sha256[:16]}...)")
        outcome, message = _deploy_phases(opts, environ, phases, release, hosts)
        code = EXIT_OK if outcome is Outcome.SUCCESS else EXIT_HEALTH
    except PhaseFailed as exc:
        message = str(exc)
        code = EXIT_CODES.get(exc.phase, 1)
        if exc.phase == "deploy" and "which is healthy" in message:
            outcome = Outcome.ROLLBACK
        ci_output.error(message, title=f"deploy failed in phase {exc.phase}")
    except BaseException as exc:
        from ai_deploy.gcp import Terminated

        if isinstance(exc, Terminated):
            message = f"{exc}; cleanup ran (any rule or key it could not remove is named above)"
            code = exc.exit_code
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted; cleanup ran (a rule or key it could not remove is named above)"
            code = 130
        else:
            message = f"unexpected error: {type(exc).__name__}: {exc}"
            code = 1
        ci_output.error(message, title="deploy stopped")
    duration = time.monotonic() - started
    failed = None if outcome is Outcome.SUCCESS else (phases.failed or "unknown")
    if outcome is Outcome.ROLLBACK and failed == "unknown":
        failed = "health"
    event = DeployEvent(
        outcome=outcome,
        release=release,
        hosts=hosts,
        duration_s=duration,
        failed_phase=failed,
        message=message,
        run_url=ci_output.run_url(environ),
    )
    if not opts.dry_run:
        for result in notify(event, env=environ):
            state = "sent" if result.ok else f"failed ({result.error or result.status})"
            _say(f"notification to {result.notifier}: {state}")
    ci_output.write_step_summary(event, phases.durations, env=environ)
    _say(event.headline if not opts.dry_run else f"dry run finished in {duration:.1f} s")
    if message and outcome is not Outcome.SUCCESS:
        print(f"ai-deploy: {message}", file=sys.stderr)
    return code


def _deploy_phases(
    opts: DeployOptions,
    environ: dict[str, str],
    phases: ci_output.Phases,
    release: str,
    hosts: list[str],
) -> tuple[Outcome, str]:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.auth import load_credentials
    from ai_deploy.gcp.compute import get_instance_nat_ip
    from ai_deploy.gcp.firewall import firewall_window
    from ai_deploy.gcp.sshkeys import SshSettings, ephemeral_ssh_key
    from ai_deploy.myip import RunnerIpError, runner_ip

    inventory = resolve_inventory(opts.inventory)
    session = None
    if opts.use_gcp:
        with phases.phase("auth", "Authenticate to GCP"):
            try:
                session = load_credentials(opts.project, environ=environ)
            except GcpError as exc:
                raise PhaseFailed("auth", str(exc)) from exc
            _say(f"authenticated for project {session.project} ({session.source})")
    with phases.phase("runner-ip", "Find this runner's address"):
        try:
            ip = runner_ip() if opts.use_gcp else None
        except RunnerIpError as exc:
            raise PhaseFailed("runner-ip", str(exc)) from exc
        if ip:
            _say(f"runner address: {ip}")
    with phases.phase("instance", "Find the instance's address"):
        if opts.host:
            address = opts.host
        else:
            if session is None or not (opts.zone and opts.instance):
                raise PhaseFailed("config", "set GCP_ZONE and GCP_INSTANCE, or pass --host ADDRESS")
            try:
                address = get_instance_nat_ip(
                    session.credentials, session.project, opts.zone, opts.instance
                )
            except Exception as exc:
                raise PhaseFailed(
                    "instance", f"could not read instance {opts.instance}: {exc}"
                ) from exc
        hosts.append(address)
        _say(f"target: {address}")
    if opts.dry_run:
        return _dry_run(opts, environ, inventory, release, address, ip, session)

    settings = SshSettings.from_env(environ)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="ai-deploy-ssh-") as tmp:
        known_hosts = Path(tmp) / "known_hosts"
        if session is not None and ip is not None:
            with phases.phase("firewall", "Open the SSH firewall window"):
                try:
                    window = stack.enter_context(
                        firewall_window(
                            session.credentials,
                            session.project,
                            source_ip=ip,
                            target_tag=opts.target_tag,
                            network=opts.network,
                            prefix=opts.rule_prefix,
                            stale_after=timedelta(minutes=opts.stale_rule_minutes),
                            environ=environ,
                        )
                    )
                except GcpError as exc:
                    raise PhaseFailed("firewall", str(exc)) from exc
                _say(f"firewall rule {window.name}: tcp:22 from {window.source_range}")
        with phases.phase("ssh", "Authorize an SSH key"):
            if session is not None and opts.instance and opts.zone:
                try:
                    access = stack.enter_context(
                        ephemeral_ssh_key(
                            session.credentials,
                            session.project,
                            zone=opts.zone,
                            instance=opts.instance,
                            settings=settings,
                            principal=session.principal,
                        )
                    )
                except GcpError as exc:
                    raise PhaseFailed("ssh", str(exc)) from exc
                user, key = access.user, access.private_key_path
            else:
                key_text = environ.get("AI_DEPLOY_SSH_PRIVATE_KEY")
                if not key_text:
                    raise PhaseFailed("ssh", "no GCP instance: set AI_DEPLOY_SSH_PRIVATE_KEY")
                key = Path(tmp) / "id"
                key.write_text(key_text.replace("\r\n", "\n").rstrip("\n") + "\n")
                key.chmod(0o600)
                user = settings.user
            wait_for_ssh(address, user, key, known_hosts, opts.ssh_wait_s)
        run_env = {
            **environ,
            "AI_DEPLOY_HOSTS": address,
            "AI_DEPLOY_SSH_USER": user,
            "AI_DEPLOY_SSH_KEY": str(key),
            "AI_DEPLOY_SSH_KNOWN_HOSTS": str(known_hosts),
        }
        with phases.phase("deploy", "Deploy with pyinfra"):
            data = [f"artifact={opts.artifact.resolve()}", *opts.data]
            rc, tail = run_pyinfra_streamed(pyinfra_command(inventory, data), run_env)
            if rc != 0:
                rolled = _gate_rolled_back(tail)
                detail = "\n".join(line for line in tail[-12:] if line.strip())
                raise PhaseFailed(
                    "deploy",
                    f"pyinfra failed (exit {rc})"
                    + ("; the host's health gate rolled back, which is healthy" if rolled else "")
                    + f":\n{detail}",
                )
        url = f"http://{address}:{opts.port}{opts.health_path}"
        with phases.phase("health", "Check health from outside"):
            ok, why = check_health(
                url, opts.health_attempts, opts.health_interval_s, opts.health_timeout_s
            )
            _say(why)
        if ok:
            return Outcome.SUCCESS, f"release {release} is healthy at {url}"
        with phases.phase("rollback", "Roll back to the previous release"):
            data = ["rollback=previous", *opts.data]
            rc, _ = run_pyinfra_streamed(pyinfra_command(inventory, data), run_env)
            back, back_why = (
                (False, "the rollback run failed")
                if rc
                else check_health(
                    url, opts.health_attempts, opts.health_interval_s, opts.health_timeout_s
                )
            )
            if not back:
                raise PhaseFailed(
                    "rollback", f"{why}; rolling back did not bring it back: {back_why}"
                )
            _say(f"rolled back: {back_why}")
        return Outcome.ROLLBACK, f"{why}; rolled back to the previous release, which is healthy"


def _dry_run(
    opts: DeployOptions,
    environ: Mapping[str, str],
    inventory: str,
    release: str,
    address: str,
    ip: str | None,
    session: object,
) -> tuple[Outcome, str]:
    from ai_deploy.gcp.firewall import firewall_rule_name

    if ip is not None:
        name = firewall_rule_name(opts.rule_prefix, environ)
        _say(
            f"would create firewall rule {name}: allow tcp:22 from {ip}/32 to tag "
            f"{opts.target_tag} on network {opts.network}, then delete it"
        )
    if session is not None and opts.instance:
        _say(f"would authorize an ephemeral SSH key on {opts.instance} and remove it after")
    _say(f"would deploy release {release} to {address} with {inventory}")
    key_text = environ.get("AI_DEPLOY_SSH_PRIVATE_KEY")
    if ip is None and key_text and shutil.which("ssh"):
        with tempfile.TemporaryDirectory(prefix="ai-deploy-dry-") as tmp:
            key = Path(tmp) / "id"
            key.write_text(key_text.rstrip("\n") + "\n")
            key.chmod(0o600)
            run_env = {
                **environ,
                "AI_DEPLOY_HOSTS": address,
                "AI_DEPLOY_SSH_KEY": str(key),
                "AI_DEPLOY_SSH_KNOWN_HOSTS": str(Path(tmp) / "known_hosts"),
            }
            data = [f"artifact={opts.artifact.resolve()}", *opts.data]
            rc, _ = run_pyinfra_streamed(pyinfra_command(inventory, data, dry=True), run_env)
            if rc != 0:
                raise PhaseFailed("deploy", f"pyinfra --dry failed (exit {rc})")
    else:
        _say(
            "pyinfra's plan (--dry) needs SSH, which needs the firewall window and a key: "
            "not shown, since a dry run changes nothing in GCP"
        )
    return Outcome.SUCCESS, "dry run: nothing changed"
