"""The access phases of the CI entry that do not open a window: the instance's host keys read
from its guest attributes and pinned for the run, and SSH through Identity-Aware Proxy (the
standing rule checked, gcloud's tunnel on a local port for the run)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ai_deploy.ci.context import Run
from ai_deploy.ci.options import PhaseFailed


def _say(message: str) -> None:
    print(message, flush=True)


def _iap_target(run: Run) -> None:
    """Through IAP the SSH target is the instance's name (the tunnel finds it); the outside
    health check goes to its external address, or to AI_DEPLOY_HEALTH_URL without one."""
    from ai_deploy.gcp.compute import get_instance

    opts = run.opts
    if run.session is None or not (opts.zone and opts.instance) or opts.host:
        raise PhaseFailed(
            "config",
            "AI_DEPLOY_SSH_TRANSPORT=iap reaches a GCP instance: set GCP_PROJECT_ID, GCP_ZONE "
            "and GCP_INSTANCE (and no --host, --no-gcp)",
        )
    try:
        info = get_instance(run.session.credentials, run.session.project, opts.zone, opts.instance)
    except Exception as exc:
        raise PhaseFailed("instance", f"could not read instance {opts.instance}: {exc}") from exc
    if not info.nat_ip and not opts.health_url:
        raise PhaseFailed(
            "config",
            f"instance {opts.instance} has no external address for the outside health check: "
            "set AI_DEPLOY_HEALTH_URL to where its health endpoint answers",
        )
    run.address, run.health_address = opts.instance, info.nat_ip or ""
    _say(f"SSH through IAP to instance {opts.instance} (zone {opts.zone}); no firewall window")


def host_keys_phase(run: Run) -> None:
    """Pin the host keys the instance's guest agent publishes (guest attributes `hostkeys/`);
    where none are published, AI_DEPLOY_HOST_KEYS says whether first use is accepted."""
    from ai_deploy.gcp.hostkeys import enable_hint, published_host_keys

    opts = run.opts
    published = bool(run.session is not None and opts.zone and opts.instance)
    if not published and opts.host_keys != "require":  # no instance to ask: no phase to show
        run.pinned = ()
        return
    with run.phases.phase("host-keys", "Pin the instance's SSH host keys"):
        pinned: tuple = ()
        if published:
            project = run.session.project
            hint = enable_hint(project, opts.zone, opts.instance)
            try:
                found = published_host_keys(
                    run.session.credentials, project, opts.zone, opts.instance
                )
                why = (
                    f"instance {opts.instance} publishes no host keys (guest attributes are off "
                    f"or its guest agent has not written them; {hint})"
                )
            except Exception as exc:  # e.g. a role without compute.instances.getGuestAttributes
                found = None
                why = f"could not read the host keys of {opts.instance} ({exc})"
            if found is None:
                if opts.host_keys == "require":
                    raise PhaseFailed(
                        "ssh", f'{why}; stopping, since AI_DEPLOY_HOST_KEYS is "require"'
                    )
                _say(
                    f"{why}: the host key is accepted on first use "
                    '(AI_DEPLOY_HOST_KEYS is "accept-new")'
                )
            else:
                pinned = found
                for key in pinned:
                    _say(f"pinned host key {key.key_type} {key.fingerprint}")
        elif opts.host_keys == "require":
            raise PhaseFailed(
                "config",
                'AI_DEPLOY_HOST_KEYS "require" needs the instance\'s published keys: set GCP_ZONE '
                "and GCP_INSTANCE",
            )
        run.pinned = pinned


def access_phase(run: Run, stack: ExitStack, tmp: Path) -> None:
    """Where SSH connects: the host, or (IAP) the local port of gcloud's tunnel, open until the
    run ends; known_hosts holds the pinned keys under that name."""
    from ai_deploy.ci.ssh import prepare_access
    from ai_deploy.ci.tunnel import iap_tunnel

    opts = run.opts
    if opts.ssh_transport != "iap":
        run.access = prepare_access(tmp, run.address, pinned=run.pinned)
        run.known_hosts = run.access.known_hosts
        return
    assert run.session is not None and opts.zone and opts.instance
    with run.phases.phase("ssh", "Open the IAP tunnel"):
        tunnel = stack.enter_context(
            iap_tunnel(
                opts.instance,
                opts.zone,
                run.session.project,
                wait_s=opts.ssh_wait_s,
                environ=run.environ,
                say=_say,
            )
        )
    run.access = prepare_access(
        tmp, tunnel.host, port=tunnel.port, pinned=run.pinned, through_iap=True
    )
    run.known_hosts = run.access.known_hosts


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
