"""The least-privilege custom role for the firewall-window mode: exactly the IAM permissions
its Compute calls need, as a definition for `gcloud iam roles create --file`.

Calls and the permission each needs: firewalls insert (compute.firewalls.create, plus
compute.networks.updatePolicy on the rule's network), get, delete, list; global operations
get and wait (both compute.globalOperations.get); instances get and setMetadata; zone
operations get and wait (compute.zoneOperations.get). On an instance that runs as a service
account, setMetadata also needs iam.serviceAccounts.actAs on that account (granted on the
account, not in this project-level role).
"""

from __future__ import annotations

WINDOW_ROLE_ID = "aiDeploySshWindow"

WINDOW_PERMISSIONS: tuple[str, ...] = (
    "compute.firewalls.create",
    "compute.firewalls.delete",
    "compute.firewalls.get",
    "compute.firewalls.list",
    "compute.globalOperations.get",
    "compute.instances.get",
    "compute.instances.setMetadata",
    "compute.networks.updatePolicy",
    "compute.zoneOperations.get",
)

WINDOW_ROLE_YAML = (
    "title: ai-deploy SSH window\n"
    "description: Opens and closes ai-deploy's temporary SSH firewall rule and adds its "
    "short-lived SSH key\n"
    "stage: GA\n"
    "includedPermissions:\n" + "".join(f"- {p}\n" for p in WINDOW_PERMISSIONS)
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


__all__ = ["WINDOW_PERMISSIONS", "WINDOW_ROLE_ID", "WINDOW_ROLE_YAML", "window_role_hint"]
