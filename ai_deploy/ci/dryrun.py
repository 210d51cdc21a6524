"""`ai-deploy deploy --dry-run`: pyinfra's real plan per host, reached with the same user, key,
inventory and settings as the real run, and nothing changed. In GCP mode reaching the host
needs the firewall window and a key, which a dry run does not create: it says what it would
create instead."""

from __future__ import annotations

from pathlib import Path

from ai_deploy.ci import exitcodes
from ai_deploy.ci.context import Run
from ai_deploy.ci.gcp_phases import outside_gcp_identity
from ai_deploy.ci.options import PhaseFailed
from ai_deploy.ci.pyinfra_run import run_pyinfra_streamed
from ai_deploy.ci.ssh import wait_for_ssh


def dry_run(run: Run, tmp: Path) -> tuple[int, str]:
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.sshkeys import SshSettings

    opts = run.opts
    print(f"would deploy release {run.release} to {run.address} with {run.inventory}")
    if run.runner_ip is not None:
        from ai_deploy.gcp.firewall import firewall_rule_name

        name = firewall_rule_name(opts.rule_prefix, run.environ)
        print(
            f"would create firewall rule {name}: allow tcp:22 from {run.runner_ip}/32 to tag "
            f"{opts.target_tag} on network {opts.network}, then delete it"
        )
    if run.session is not None and opts.instance:
        print(f"would authorize an ephemeral SSH key on {opts.instance} and remove it after")
        print(
            "pyinfra's plan needs SSH, which needs the firewall window and a key: not shown, "
            "since a dry run changes nothing in GCP"
        )
        return exitcodes.EXIT_OK, "dry run: nothing changed"
    try:
        default_user = SshSettings.from_env(run.environ).user
    except GcpError as exc:
        raise PhaseFailed("config", str(exc)) from exc
    who = outside_gcp_identity(run, tmp, default_user)
    run.user, run.key = who.user, who.key
    assert run.known_hosts is not None
    with run.phases.phase("ssh", "Check SSH"):
        wait_for_ssh(
            run.address,
            run.user,
            run.key,
            run.known_hosts,
            opts.ssh_wait_s,
            key_is_new=False,
            key_source=who.described,
        )
    with run.phases.phase("deploy", "pyinfra's plan (nothing is changed)"):
        data = [f"artifact={opts.artifact.resolve()}", *opts.data]
        result = run_pyinfra_streamed(run.inventory, data, run.pyinfra_env(), dry=True)
        if result.returncode != 0:
            raise PhaseFailed("deploy", f"pyinfra --dry failed (exit {result.returncode})")
    return exitcodes.EXIT_OK, "dry run: nothing changed"
