"""Access for every `ai-deploy deploy`: the run's targets found, and the way to each opened for
the rollout, one function per transport, everything undone on every way out (each undo is a
context on the run's stack).

- GCP instances (GCP_INSTANCE, or a label or filter: ai_deploy.ci.connect.fleet_access): their host
  keys pinned, then the firewall window for this runner (direct) or, through Identity-Aware
  Proxy, the standing rule checked and one gcloud tunnel per instance; one key for the run
  authorized on every instance (ssh-keys metadata, OS Login, or a provided key).
- A plain SSH host (`--host`): the user and key given (variables, ai-deploy.toml), SSH checked;
  in GCP mode through the firewall window for this runner.
- The inventory's hosts (`-i`, `-e`): reached as the inventory says; nothing to open."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ai_deploy.ci.connect.fleet_access import (
    fleet_host_keys_phase,
    fleet_instances_phase,
    fleet_keys_phase,
    instance_filter_of,
)
from ai_deploy.ci.connect.gcp_phases import auth_phase, firewall_phase, runner_ip_phase
from ai_deploy.ci.connect.ssh import Identity, provided_identity, wait_for_ssh
from ai_deploy.ci.context import Run
from ai_deploy.ci.options import PhaseFailed


def _say(message: str) -> None:
    print(message, flush=True)


def open_access(run: Run, stack: ExitStack, tmp: Path) -> None:
    """The run's targets and the way to each, open until STACK closes."""
    opts = run.opts
    found_by = instance_filter_of(run)
    if opts.use_gcp and opts.instance:
        _gcp_instances(run, stack, tmp, None)
    elif opts.host:
        _plain_host(run, stack, tmp)
    elif found_by is not None:
        _gcp_instances(run, stack, tmp, found_by)
    else:
        if opts.ssh_transport == "iap":
            raise PhaseFailed(
                "config",
                "AI_DEPLOY_SSH_TRANSPORT=iap reaches GCP instances: set GCP_INSTANCE (and "
                "GCP_ZONE), or GCP_INSTANCE_FILTER / AI_DEPLOY_INSTANCES_LABEL",
            )
        if opts.use_gcp and (opts.project or run.environ.get("GCP_PROJECT_ID")):
            auth_phase(run)


def _gcp_instances(run: Run, stack: ExitStack, tmp: Path, found_by: str | None) -> None:
    iap = run.opts.ssh_transport == "iap"
    auth_phase(run)
    if not iap:
        runner_ip_phase(run)
    if found_by is None:
        instance_phase(run)
    else:
        fleet_instances_phase(run, found_by)
    fleet_host_keys_phase(run, tmp)  # before any tunnel or window: a refusal opens nothing
    if iap:
        iap_phase(run)
        iap_tunnels_phase(run, stack)
    else:
        firewall_phase(run, stack)
    fleet_keys_phase(run, stack, tmp)


def instance_phase(run: Run) -> None:
    """GCP_INSTANCE in GCP_ZONE as the run's one target, named by the instance; SSH and the
    outside health check go to its external address (or --host). Through IAP, SSH goes to the
    tunnel and the health check to the external address, or AI_DEPLOY_HEALTH_URL."""
    from ai_deploy.gcp.compute import get_instance

    opts = run.opts
    iap = opts.ssh_transport == "iap"
    if not opts.zone or (iap and opts.host):
        raise PhaseFailed(
            "config",
            "set GCP_ZONE and GCP_INSTANCE, or pass --host ADDRESS"
            if not iap
            else "AI_DEPLOY_SSH_TRANSPORT=iap reaches a GCP instance: set GCP_PROJECT_ID, "
            "GCP_ZONE and GCP_INSTANCE (and no --host, --no-gcp)",
        )
    with run.phases.phase("instance", "Find the instance's address"):
        try:
            info = get_instance(run.session.credentials, run.session.project, opts.zone,
                                opts.instance)  # fmt: skip
        except Exception as exc:
            why = f"could not read instance {opts.instance}: {exc}"
            raise PhaseFailed("instance", why) from exc
        address = opts.host or info.nat_ip or ""
        if not address and not (iap and opts.health_url):
            raise PhaseFailed(
                "config" if iap else "instance",
                f"instance {opts.instance} has no external address for the outside health "
                "check: set AI_DEPLOY_HEALTH_URL to where its health endpoint answers"
                if iap
                else f"could not read instance {opts.instance}: it has no external IP",
            )
        run.targets = [(opts.instance, opts.zone, address)]
        run.hosts[:] = [opts.instance]
        if iap:
            where = f"instance {opts.instance} (zone {opts.zone})"
            _say(f"SSH through IAP to {where}; no firewall window")
        else:
            _say(f"target: {opts.instance} ({opts.zone}) at {address}")


def _plain_host(run: Run, stack: ExitStack, tmp: Path) -> None:
    """`--host ADDRESS`: one target reached with the given user and key."""
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.sshsettings import SshSettings

    opts = run.opts
    if opts.ssh_transport == "iap":
        raise PhaseFailed(
            "config",
            "AI_DEPLOY_SSH_TRANSPORT=iap reaches a GCP instance: set GCP_PROJECT_ID, GCP_ZONE "
            "and GCP_INSTANCE (and no --host, --no-gcp)",
        )
    if opts.host_keys == "require":
        raise PhaseFailed(
            "config",
            'AI_DEPLOY_HOST_KEYS "require" needs the instance\'s published keys: set GCP_ZONE '
            "and GCP_INSTANCE",
        )
    if opts.use_gcp:
        auth_phase(run)
        runner_ip_phase(run)
        firewall_phase(run, stack)
    address = opts.host or ""
    run.targets, run.hosts[:] = [(address, "", address)], [address]
    try:
        default_user = SshSettings.from_env(run.environ).user
    except GcpError as exc:  # a login name or key setting that cannot work
        raise PhaseFailed("config", str(exc)) from exc
    with run.phases.phase("ssh", "Check SSH"):
        who = outside_gcp_identity(run, tmp, default_user)
        run.user, run.key = who.user, who.key
        run.known_hosts = tmp / "known_hosts"
        run.known_hosts.touch()
        wait_for_ssh(address, run.user, run.key, run.known_hosts, opts.ssh_wait_s,
                     key_is_new=False, key_source=who.described)  # fmt: skip


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


def iap_tunnels_phase(run: Run, stack: ExitStack) -> None:
    """One gcloud IAP tunnel per target, each on its own local port until STACK closes; the
    tunnels a killed run left are ended first."""
    from ai_deploy.ci.connect.tunnel import iap_tunnel, sweep_left_tunnels

    with run.phases.phase("ssh", "Open the IAP tunnel" + ("s" if len(run.targets) > 1 else "")):
        sweep_left_tunnels(run.environ, _say)
        for name, zone, _ in run.targets:
            tunnel = stack.enter_context(
                iap_tunnel(
                    name,
                    zone,
                    run.session.project,
                    wait_s=run.opts.ssh_wait_s,
                    environ=run.environ,
                    say=_say,
                )
            )
            run.tunnels[name] = (tunnel.host, tunnel.port)
    # SSH now goes to each tunnel's port: the pinned keys are known under that name
    assert run.known_hosts is not None
    run.known_hosts.write_text(
        "".join(
            key.known_hosts_line(run.known_hosts_name(name, address)) + "\n"
            for name, _, address in run.targets
            for key in run.pinned_of.get(name, ())
        )
    )


def iap_phase(run: Run) -> None:
    """The standing rule that lets IAP reach port 22 must exist; this run creates none."""
    from ai_deploy.gcp.iap import IapError, require_standing_rule

    opts = run.opts
    with run.phases.phase("firewall", "Check the standing IAP firewall rule"):
        try:
            rule = require_standing_rule(
                run.session.credentials,
                run.session.project,
                network=opts.network,
                target_tag=opts.target_tag,
            )
        except IapError as exc:
            raise PhaseFailed("firewall", str(exc)) from exc
        except Exception as exc:  # e.g. no compute.firewalls.list: the tunnel may still work
            _say(f"could not check IAP's firewall rule ({type(exc).__name__}: {exc}); going on")
            return
        _say(f"firewall rule {rule.name} lets IAP ({', '.join(rule.source_ranges)}) reach tcp:22")
