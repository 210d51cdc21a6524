"""Access to a fleet of GCP instances found by label or filter (GCP_INSTANCE_FILTER, or
AI_DEPLOY_INSTANCES_LABEL=KEY=VALUE): the RUNNING matches listed through the Compute API, each
instance's published host keys pinned (read on all at once), one firewall window for the
target tag (every instance must carry it), and one key for the run authorized on every
instance at once (its ssh-keys metadata, or once through OS Login; see gcp/fleetkeys), all
removed on every way out with the rest of the run's stack.
The hosts keep their instance names everywhere; SSH and the health check go to the address
AI_DEPLOY_ADDRESS chooses (external, or internal from inside the VPC)."""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from ai_deploy.ci.context import Run
from ai_deploy.ci.options import PhaseFailed


def _say(message: str) -> None:
    print(message, flush=True)


def instance_filter_of(run: Run) -> str | None:
    """The fleet's filter when the run lists instances (GCP mode, no single instance)."""
    if not run.opts.use_gcp:
        return None
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.instances import environment_filter  # loads the Compute client

    try:
        return environment_filter(run.environ)
    except GcpError as exc:
        raise PhaseFailed("config", str(exc)) from exc


def fleet_instances_phase(run: Run, filter: str) -> None:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.instances import list_instances, not_running_reason, pick_address

    mode = run.environ.get("AI_DEPLOY_ADDRESS", "").strip() or "external"
    with run.phases.phase("instance", "List the instances"):
        try:
            listed = list_instances(run.session.credentials, run.session.project, filter)
        except GcpError as exc:
            raise PhaseFailed("instance", str(exc)) from exc
        except Exception as exc:  # an API refusal: its own message names the permission
            raise PhaseFailed("instance", f"could not list instances ({filter}): {exc}") from exc
        for inst in listed:
            if inst.status != "RUNNING":
                _say(not_running_reason(inst))
        running = [i for i in listed if i.status == "RUNNING"]
        if not running:
            raise PhaseFailed(
                "instance",
                f"no RUNNING instance of project {run.session.project} matches {filter!r}",
            )
        try:
            targets = [(i.name, i.zone, pick_address(i, mode)) for i in running]
        except GcpError as exc:
            raise PhaseFailed("instance", str(exc)) from exc
    # Settings that cannot work: said as such (exit 2), not as a failure to read instances.
    with run.phases.phase("config", "Check the instances against the settings"):
        names = [i.name for i in running]
        if len(set(names)) != len(names):
            raise PhaseFailed(
                "config", f"instances of {filter!r} share names across zones: narrow the filter"
            )
        untagged = [i.name for i in running if run.opts.target_tag not in i.tags]
        if untagged and run.opts.ssh_transport == "direct":
            raise PhaseFailed(
                "config",
                f"instance(s) {', '.join(untagged)} lack the network tag {run.opts.target_tag} "
                "the SSH window targets: add it, or set AI_DEPLOY_TARGET_TAG",
            )
    run.targets = targets
    run.hosts[:] = names
    for name, zone, address in run.targets:
        _say(f"instance {name} ({zone}): {address}")


def fleet_host_keys_phase(run: Run, tmp: Path) -> None:
    """Every instance's published host keys pinned in one known_hosts file, by address; read
    on all instances at once (each read retried on 429/5xx). An instance whose read fails (an
    error, not "publishes none") fails the run naming it: it never drops pinning for all."""
    from ai_deploy.gcp.hostkeys import published_host_keys_of_all

    lines: list[str] = []
    missing: list[str] = []
    with run.phases.phase("host-keys", "Pin the instances' SSH host keys"):
        places = [(name, zone) for name, zone, _ in run.targets]
        found_of, failed = published_host_keys_of_all(
            run.session.credentials, run.session.project, places
        )
        if failed:
            raise PhaseFailed(
                "ssh",
                "could not read the published host keys of "
                + "; ".join(f"instance {name}: {error}" for name, error in failed.items())
                + " (so they cannot be pinned; nothing was changed on any instance)",
            )
        for name, _, address in run.targets:
            found = found_of.get(name)
            if not found:
                missing.append(name)
                continue
            lines += [key.known_hosts_line(address) for key in found]
            run.pinned_of[name] = tuple(found)
            _say(f"pinned {len(found)} host key(s) of {name}")
        if missing and run.opts.host_keys == "require":
            raise PhaseFailed(
                "ssh",
                f"instance(s) {', '.join(missing)} publish no host keys; stopping, since "
                'AI_DEPLOY_HOST_KEYS is "require"',
            )
        if missing:
            _say(
                f"{', '.join(missing)}: no published host keys; accepted on first use "
                '(AI_DEPLOY_HOST_KEYS is "accept-new")'
            )
    run.known_hosts = tmp / "known_hosts"
    run.known_hosts.write_text("".join(line + "\n" for line in lines))
    run.strict_host_keys = "accept-new" if missing else "yes"


class _SshPhaseOnExit:
    """Enters CONTEXT; an error raised by its exit (a run key it could not remove) ends the
    run as a failure of the ssh phase (exit 13), naming what was left."""

    def __init__(self, context: AbstractContextManager[Any]) -> None:
        self.context = context

    def __enter__(self) -> Any:
        return self.context.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        from ai_deploy.gcp import GcpError

        try:
            return self.context.__exit__(*exc_info)
        except GcpError as exc:
            if exc is exc_info[1]:
                raise
            raise PhaseFailed("ssh", str(exc)) from exc


def fleet_keys_phase(run: Run, stack: ExitStack, tmp: Path) -> None:
    """One key for the run, authorized on every instance at once; SSH checked on each."""
    from ai_deploy.ci.connect.ssh import SshAccess, wait_for_ssh
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.fleetkeys import fleet_ssh_keys
    from ai_deploy.gcp.keypair import generate_key_pair
    from ai_deploy.gcp.oslogin import ssh_settings_for
    from ai_deploy.gcp.runkeys import RunMark
    from ai_deploy.gcp.sshkeys import SSH_MODE_ENV, SshSettings

    with run.phases.phase("ssh", "Authorize an SSH key on every instance"):
        try:
            settings = SshSettings.from_env(run.environ)
            name, zone, _ = run.targets[0]
            settings, note = ssh_settings_for(
                run.session.credentials,
                run.session.project,
                zone,
                name,
                settings,
                mode_chosen=bool(run.environ.get(SSH_MODE_ENV, "").strip()),
            )
            if note:
                _say(note)
            keydir = tmp / "fleet-key"
            keydir.mkdir(mode=0o700)
            pair = generate_key_pair(keydir, comment="ai-deploy@rollout")
            deployment = run.settings.app_name if run.settings else "ai-server"
            access = stack.enter_context(
                _SshPhaseOnExit(
                    fleet_ssh_keys(
                        run.session.credentials,
                        run.session.project,
                        [(name, zone) for name, zone, _ in run.targets],
                        settings=settings,
                        key_pair=pair,
                        mark=RunMark.current(deployment, run.environ),
                        environ=run.environ,
                        principal=run.session.principal,
                    )
                )
            )
        except GcpError as exc:
            raise PhaseFailed("ssh", str(exc)) from exc
        run.user, run.key = access.user, access.private_key_path
        assert run.known_hosts is not None
        for name, _, address in run.targets:
            pinned = run.pinned_of.get(name, ())
            host, port = run.endpoint(name, address)
            wait_for_ssh(
                address,
                run.user,
                run.key,
                run.known_hosts,
                run.opts.ssh_wait_s,
                key_is_new=settings.mode != "provided",
                access=SshAccess(run.known_hosts, host, port, pinned, name in run.tunnels),
            )
            _say(f"SSH to {name} works")
