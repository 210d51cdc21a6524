"""The production GPU VM(s): the `prod` group (group_data/prod.py overrides group_data/all.py).

Where the hosts are, in order:
- AI_DEPLOY_HOSTS: comma-separated addresses (a plain address, or any non-GCP target);
  `ai-deploy deploy` sets it to the instance's external address.
- else the `hosts` of the environment in ai-deploy.toml (AI_DEPLOY_ENVIRONMENT, set by
  `ai-deploy -e ENV`; production when the file has that table and none is named);
- else GCP_PROJECT_ID, GCP_ZONE, GCP_INSTANCE: the instance's external address, read from the
  Compute API with Application Default Credentials.
SSH as AI_DEPLOY_SSH_USER (default ubuntu), with the key at AI_DEPLOY_SSH_KEY when set; host
keys are checked against AI_DEPLOY_SSH_KNOWN_HOSTS when set, with AI_DEPLOY_SSH_STRICT_HOST_KEYS
(`yes` when `ai-deploy deploy` pinned the instance's published keys there, else `accept-new`:
first use accepted). AI_DEPLOY_SSH_ENDPOINTS (`NAME=HOST:PORT,...`) sends SSH for host NAME to
HOST:PORT: through IAP, `ai-deploy deploy` names the host by its instance and connects to the
local port of `gcloud compute start-iap-tunnel INSTANCE 22 --local-host-port=localhost:0`.

Settings from the app's ai-deploy.toml (in the current directory, or at AI_DEPLOY_SETTINGS),
then its environment's table, become each host's data: above group_data, below --data. They,
group_data and pyinfra's --data are checked here, before any host is connected; run from
another directory, the project's
group_data/all.py and prod.py are given as the `all` and `prod` groups' data.
"""

import os

from ai_deploy.settings.pyinfra_hooks import inventory_settings

_settings = inventory_settings(__file__)


def _addresses() -> list[str]:
    listed = [a.strip() for a in os.environ.get("AI_DEPLOY_HOSTS", "").split(",") if a.strip()]
    if listed:
        return listed
    if _settings.hosts:  # the environment's hosts in ai-deploy.toml
        return list(_settings.hosts)
    zone, instance = os.environ.get("GCP_ZONE"), os.environ.get("GCP_INSTANCE")
    if zone and instance:
        from ai_deploy.gcp.auth import load_credentials
        from ai_deploy.gcp.compute import get_instance_nat_ip

        session = load_credentials()
        return [get_instance_nat_ip(session.credentials, session.project, zone, instance)]
    raise SystemExit(
        "inventories/prod.py: set AI_DEPLOY_HOSTS to the VM's address, "
        "or GCP_PROJECT_ID, GCP_ZONE and GCP_INSTANCE to look it up"
    )


_data: dict[str, object] = {
    **_settings.host_data,
    "ssh_user": os.environ.get("AI_DEPLOY_SSH_USER", _settings.host_data.get("ssh_user", "ubuntu")),
}
if os.environ.get("AI_DEPLOY_SSH_KEY"):
    _data["ssh_key"] = os.environ["AI_DEPLOY_SSH_KEY"]
    _data["ssh_allow_agent"] = False
    _data["ssh_look_for_keys"] = False
if os.environ.get("AI_DEPLOY_SSH_KNOWN_HOSTS"):
    _data["ssh_known_hosts_file"] = os.environ["AI_DEPLOY_SSH_KNOWN_HOSTS"]
    _data["ssh_strict_host_key_checking"] = os.environ.get(
        "AI_DEPLOY_SSH_STRICT_HOST_KEYS", "accept-new"
    )


def _endpoints() -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for item in os.environ.get("AI_DEPLOY_SSH_ENDPOINTS", "").split(","):
        name, _, endpoint = item.strip().partition("=")
        host, _, port = endpoint.rpartition(":")
        if not (name and host and port.isdigit()):
            if item.strip():
                raise SystemExit(f"AI_DEPLOY_SSH_ENDPOINTS: {item.strip()!r} is not NAME=HOST:PORT")
            continue
        found[name] = {"ssh_hostname": host, "ssh_port": int(port)}
    return found


_where = _endpoints()
prod = [(address, {**_data, **_where.get(address, {})}) for address in _addresses()]
if _settings.group_data:  # pyinfra will not find the project's group_data/ from here
    all = ([address for address, _ in prod], _settings.group_data.get("all", {}))
    prod = (prod, _settings.group_data.get("prod", {}))
