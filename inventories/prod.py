"""The production GPU VM(s): the `prod` group (group_data/prod.py overrides group_data/all.py).

Addresses come from AI_DEPLOY_HOSTS (comma-separated: a plain address, or any non-GCP target).
SSH as AI_DEPLOY_SSH_USER (default ubuntu) with the key at AI_DEPLOY_SSH_KEY when set.
"""

import os

_addresses = [a.strip() for a in os.environ.get("AI_DEPLOY_HOSTS", "").split(",") if a.strip()]
if not _addresses:
    raise SystemExit(
        "inventories/prod.py: set AI_DEPLOY_HOSTS to the VM's address (comma-separated for several)"
    )

_data = {"ssh_user": os.environ.get("AI_DEPLOY_SSH_USER", "ubuntu")}
if os.environ.get("AI_DEPLOY_SSH_KEY"):
    _data["ssh_key"] = os.environ["AI_DEPLOY_SSH_KEY"]

prod = [(address, dict(_data)) for address in _addresses]
