"""The least-privilege custom roles: exactly the IAM permissions each access mode's calls need,
as definitions for `gcloud iam roles create --file`.

Every mode reads the instance (compute.instances.get), its published host keys
(instances.getGuestAttributes: compute.instances.getGuestAttributes) and the project's
metadata, to see whether OS Login is on project-wide (projects.get: compute.projects.get).
The short-lived key as an `ssh-keys` entry: instances.setMetadata and the zone operation's
get/wait (compute.zoneOperations.get). The firewall window: firewalls insert
(compute.firewalls.create, plus compute.networks.updatePolicy on the rule's network), get,
delete, list, and the global operation's get/wait (compute.globalOperations.get). IAP: the
standing rule is listed (compute.firewalls.list), the tunnel needs
iap.tunnelInstances.accessViaIAP. OS Login instead of the `ssh-keys` entry: no setMetadata, but
compute.instances.osAdminLogin (the deploy uses sudo); the OS Login API's key import and delete
on the principal's own account need no further permission. On an instance that runs as a
service account, setMetadata and OS Login also need iam.serviceAccounts.actAs on that account
(granted on the account, not in a project-level role).
"""

from __future__ import annotations

WINDOW_ROLE_ID = "aiDeploySshWindow"
IAP_ROLE_ID = "aiDeploySshIap"

READ_INSTANCE: tuple[str, ...] = (
    "compute.instances.get",
    "compute.instances.getGuestAttributes",
    "compute.projects.get",
)
METADATA_KEY: tuple[str, ...] = ("compute.instances.setMetadata", "compute.zoneOperations.get")
OSLOGIN_KEY: tuple[str, ...] = ("compute.instances.osAdminLogin",)

WINDOW_PERMISSIONS: tuple[str, ...] = tuple(
    sorted(
        {
            *READ_INSTANCE,
            *METADATA_KEY,
            "compute.firewalls.create",
            "compute.firewalls.delete",
            "compute.firewalls.get",
            "compute.firewalls.list",
            "compute.globalOperations.get",
            "compute.networks.updatePolicy",
        }
    )
)
IAP_PERMISSIONS: tuple[str, ...] = tuple(
    sorted(
        {
            *READ_INSTANCE,
            *METADATA_KEY,
            "compute.firewalls.list",
            "iap.tunnelInstances.accessViaIAP",
        }
    )
)


def _role_yaml(title: str, description: str, permissions: tuple[str, ...]) -> str:
    return (
        f"title: {title}\n"
        f"description: {description}\n"
        "stage: GA\n"
        "includedPermissions:\n" + "".join(f"- {p}\n" for p in permissions)
    )


WINDOW_ROLE_YAML = _role_yaml(
    "ai-deploy SSH window",
    "Opens and closes ai-deploy's temporary SSH firewall rule and adds its short-lived SSH key",
    WINDOW_PERMISSIONS,
)
IAP_ROLE_YAML = _role_yaml(
    "ai-deploy SSH through IAP",
    "Reaches the instance through IAP TCP forwarding and adds ai-deploy's short-lived SSH key",
    IAP_PERMISSIONS,
)


def window_role_hint(project: str) -> str:
    """What to grant, for a message after a 403: the role file and the two commands."""
    return (
        f"create this custom role and grant it to the deploy's service account (avoid "
        f"roles/compute.securityAdmin: it can open any port):\n"
        f"--- role.yaml\n{WINDOW_ROLE_YAML}---\n"
        f"gcloud iam roles create {WINDOW_ROLE_ID} --project={project} --file=role.yaml\n"
        f"gcloud projects add-iam-policy-binding {project} "
        f"--member=serviceAccount:SA_EMAIL --role=projects/{project}/roles/{WINDOW_ROLE_ID}"
    )


__all__ = [
    "IAP_PERMISSIONS",
    "IAP_ROLE_ID",
    "IAP_ROLE_YAML",
    "METADATA_KEY",
    "OSLOGIN_KEY",
    "READ_INSTANCE",
    "WINDOW_PERMISSIONS",
    "WINDOW_ROLE_ID",
    "WINDOW_ROLE_YAML",
    "window_role_hint",
]
