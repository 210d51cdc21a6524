"""The production GPU VM(s): the `prod` group (group_data/prod.py overrides group_data/all.py).

Where the hosts are, in order:
- AI_DEPLOY_HOSTS: comma-separated addresses (a plain address, or any non-GCP target);
  `ai-deploy deploy` sets it to the instance's external address.
- else GCP_INSTANCE_FILTER (a Compute list filter, e.g. `labels.role=ai-server`) or
  AI_DEPLOY_INSTANCES_LABEL=KEY=VALUE: the RUNNING instances of GCP_PROJECT_ID that match, in
  every zone, each host named by its instance and reached (ssh_hostname) at its external
  address, or its internal one with AI_DEPLOY_ADDRESS=internal; matching instances that are
  not running are named on stderr and left out;
- else the `hosts` of the environment in ai-deploy.toml (AI_DEPLOY_ENVIRONMENT, set by
  `ai-deploy -e ENV`; production when the file has that table and none is named);
- else GCP_PROJECT_ID, GCP_ZONE, GCP_INSTANCE: the instance's external address, read from the
  Compute API with Application Default Credentials.
SSH as the environment's `ssh_user` with its `ssh_key` from ai-deploy.toml, overridden by
AI_DEPLOY_SSH_USER and AI_DEPLOY_SSH_PRIVATE_KEY (the key's text or a path); the user defaults to
ubuntu. Host keys are checked against AI_DEPLOY_SSH_KNOWN_HOSTS when set, with
AI_DEPLOY_SSH_STRICT_HOST_KEYS (`yes` when `ai-deploy deploy` pinned the instance's published
keys there, else `accept-new`: first use accepted); else against ai-deploy's own known_hosts
(ai_deploy.settings.ssh). AI_DEPLOY_SSH_ENDPOINTS (`NAME=HOST:PORT,...`) sends SSH for host NAME
to HOST:PORT: through IAP, `ai-deploy deploy` names the host by its instance and connects to the
local port of `gcloud compute start-iap-tunnel INSTANCE 22 --local-host-port=localhost:0`.

Every other setting (group_data, ai-deploy.toml and its environment's table, --data) reaches
each host through ai_deploy.settings.layers, as for any inventory; they are checked here,
before any host is connected.
"""

import os
import sys

from ai_deploy.settings.pyinfra_hooks import inventory_settings
from ai_deploy.settings.ssh import Reach, ReachError

_settings = inventory_settings(__file__)


def _by_filter() -> dict[str, str]:
    """Instance name -> address of the RUNNING instances the filter variables match."""
    from ai_deploy.gcp import GcpError
    from ai_deploy.gcp.auth import load_credentials
    from ai_deploy.gcp.instances import deploy_targets, environment_filter

    try:
        session = load_credentials()
        found, refused = deploy_targets(
            session.credentials,
            session.project,
            environment_filter(os.environ) or "",
            mode=os.environ.get("AI_DEPLOY_ADDRESS", "").strip() or "external",
        )
    except GcpError as exc:
        raise SystemExit(f"inventories/prod.py: {exc}") from None
    for reason in refused:
        print(f"inventories/prod.py: {reason}", file=sys.stderr)
    return found


def _hosts() -> list[tuple[str, dict[str, object]]]:
    """(host name, its own data) of each host, from the first place above that names any."""
    if _reach.hosts:
        return [(address, {}) for address in _reach.hosts]
    if os.environ.get("GCP_INSTANCE_FILTER") or os.environ.get("AI_DEPLOY_INSTANCES_LABEL"):
        return [(name, {"ssh_hostname": address}) for name, address in _by_filter().items()]
    if _settings.hosts:  # the environment's hosts in ai-deploy.toml
        return [(address, {}) for address in _settings.hosts]
    zone, instance = os.environ.get("GCP_ZONE"), os.environ.get("GCP_INSTANCE")
    if zone and instance:
        from ai_deploy.gcp.auth import load_credentials
        from ai_deploy.gcp.compute import get_instance_nat_ip

        session = load_credentials()
        return [(get_instance_nat_ip(session.credentials, session.project, zone, instance), {})]
    raise SystemExit(
        "inventories/prod.py: set AI_DEPLOY_HOSTS to the VM's address, GCP_INSTANCE_FILTER or "
        "AI_DEPLOY_INSTANCES_LABEL to find the VMs, or GCP_PROJECT_ID, GCP_ZONE and "
        "GCP_INSTANCE to look one up"
    )


_data: dict[str, object] = {"ssh_user": "ubuntu", **_settings.ssh_data}


try:
    _reach = Reach.from_env(os.environ)  # what `ai-deploy` handed: hosts and how to reach them
except ReachError as exc:
    raise SystemExit(f"inventories/prod.py: {exc}") from None
_where = {n: {"ssh_hostname": h, "ssh_port": p} for n, (h, p) in _reach.endpoints.items()}
prod = [(name, {**_data, **own, **_where.get(name, {})}) for name, own in _hosts()]
