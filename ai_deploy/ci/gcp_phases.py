"""The phases of the CI entry that deal with GCP before pyinfra runs: authenticate, find the
runner's address and the instance's, open the firewall window, authorize the run's SSH key
(each a context on the run's stack where it must be undone)."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from ai_deploy.ci import output as ci_output
from ai_deploy.ci.access import _iap_target
from ai_deploy.ci.context import Run
from ai_deploy.ci.options import PhaseFailed
from ai_deploy.ci.ssh import Identity, provided_identity, wait_for_ssh


def _say(message: str) -> None:
    print(message, flush=True)


def auth_phase(run: Run) -> None:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.auth import load_credentials

    with run.phases.phase("auth", "Authenticate to GCP"):
        try:
            run.session = load_credentials(run.opts.project, environ=run.environ)
        except GcpError as exc:
            raise PhaseFailed("auth", str(exc)) from exc
        _say(f"authenticated for project {run.session.project} ({run.session.source})")


def runner_ip_phase(run: Run) -> None:
    from ai_deploy.ci.myip import MyIpSettings, RunnerIpError, find_runner_address

    with run.phases.phase("runner-ip", "Find this runner's address"):
        try:
            found = find_runner_address(MyIpSettings.from_env(run.environ))
        except RunnerIpError as exc:
            raise PhaseFailed("runner-ip", str(exc)) from exc
        run.runner_ip = found.address
        _say(f"runner address: {found.address} (from {', '.join(found.sources)})")
        for note in found.notes:
            ci_output.warning(note, title="runner address", env=run.environ)


def instance_phase(run: Run) -> None:
    from ai_deploy.gcp.compute import get_instance_nat_ip

    opts = run.opts
    if opts.host and opts.ssh_transport != "iap":  # named: nothing to find, no phase to show
        run.address = opts.host
        run.hosts.append(run.address)
        return
    with run.phases.phase("instance", "Find the instance's address"):
        if opts.ssh_transport == "iap":
            _iap_target(run)
        elif run.session is None or not (opts.zone and opts.instance):
            raise PhaseFailed("config", "set GCP_ZONE and GCP_INSTANCE, or pass --host ADDRESS")
        else:
            try:
                run.address = get_instance_nat_ip(
                    run.session.credentials, run.session.project, opts.zone, opts.instance
                )
            except Exception as exc:
                raise PhaseFailed(
                    "instance", f"could not read instance {opts.instance}: {exc}"
                ) from exc
        run.hosts.append(run.address)
        _say(f"target: {run.address}")


def firewall_phase(run: Run, stack: ExitStack) -> None:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.firewall import firewall_window

    opts = run.opts
    with run.phases.phase("firewall", "Open the SSH firewall window"):
        try:
            window = stack.enter_context(
                firewall_window(
                    run.session.credentials,
                    run.session.project,
                    source_ip=run.runner_ip,
                    target_tag=opts.target_tag,
                    network=opts.network,
                    prefix=opts.rule_prefix,
                    stale_after=timedelta(minutes=opts.stale_rule_minutes),
                    environ=run.environ,
                )
            )
        except GcpError as exc:
            raise PhaseFailed("firewall", str(exc)) from exc
        _say(f"firewall rule {window.name}: tcp:22 from {window.source_range}")


def ssh_phase(run: Run, stack: ExitStack, tmp: Path) -> None:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.oslogin import ssh_settings_for
    from ai_deploy.gcp.sshkeys import SSH_MODE_ENV, SshSettings, ephemeral_ssh_key

    opts = run.opts
    key_is_new = run.session is not None and bool(opts.instance and opts.zone)
    with run.phases.phase("ssh", "Authorize an SSH key" if key_is_new else "Check SSH"):
        try:
            settings = SshSettings.from_env(run.environ)
        except GcpError as exc:  # a login name or key setting that cannot work
            raise PhaseFailed("config", str(exc)) from exc
        tried = ""  # the provided key's source, for a refusal's message
        if key_is_new:
            try:
                # OS Login on (instance or project) makes the guest ignore ssh-keys metadata.
                settings, note = ssh_settings_for(
                    run.session.credentials,
                    run.session.project,
                    opts.zone,
                    opts.instance,
                    settings,
                    mode_chosen=bool(run.environ.get(SSH_MODE_ENV, "").strip()),
                )
                if note:
                    _say(note)
                access = stack.enter_context(
                    ephemeral_ssh_key(
                        run.session.credentials,
                        run.session.project,
                        zone=opts.zone,
                        instance=opts.instance,
                        settings=settings,
                        principal=run.session.principal,
                    )
                )
            except GcpError as exc:
                raise PhaseFailed("ssh", str(exc)) from exc
            run.user, run.key = access.user, access.private_key_path
        else:
            who = outside_gcp_identity(run, tmp, settings.user)
            run.user, run.key, tried = who.user, who.key, who.described
        assert run.known_hosts is not None
        wait_for_ssh(
            run.address,
            run.user,
            run.key,
            run.known_hosts,
            opts.ssh_wait_s,
            key_is_new=key_is_new,
            access=run.access,
            key_source=tried,
        )


def outside_gcp_identity(run: Run, tmp: Path, default_user: str) -> Identity:
    """The user and key for a host outside GCP, from the variables or the run's settings."""
    s = run.settings
    return provided_identity(
        run.environ,
        tmp,
        s.ssh_user if s else None,
        s.ssh_key if s else None,
        s.ssh_sources if s else {},
        default_user,
    )
