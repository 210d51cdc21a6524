"""What `ai-deploy init` prints after writing the files: the one-time GCP set-up (Workload
Identity pool and provider for the repository, the deploying service account, the custom role
of the chosen access mode, the instance's tag and guest attributes, the IAP rule) and the GitHub
secrets, as commands with the names filled in."""

from __future__ import annotations

from dataclasses import dataclass

from ai_deploy.gcp.iap import IAP_ROLE, create_rule_command
from ai_deploy.gcp.permissions import IAP_ROLE_ID, IAP_ROLE_YAML, WINDOW_ROLE_ID, WINDOW_ROLE_YAML

PLACEHOLDER_PROJECT = "PROJECT_ID"
TOOL_SOURCE = "git+https://github.com/OWNER/ai-deploy@<commit>"  # no way to know it here


@dataclass(frozen=True)
class Target:
    """What the commands are filled in with (placeholders where init was not told)."""

    project: str = PLACEHOLDER_PROJECT
    zone: str = "ZONE"
    instance: str = "INSTANCE"
    repository: str = "OWNER/REPO"
    environment: str = "production"
    service_account: str = "ai-deploy"
    pool: str = "github"
    provider: str = "github"
    tag: str = "ai-server"
    network: str = "default"
    transport: str = "direct"  # or "iap"

    @property
    def sa_email(self) -> str:
        return f"{self.service_account}@{self.project}.iam.gserviceaccount.com"


def next_steps(t: Target, written: list[str]) -> str:
    iap = t.transport == "iap"
    role_id, role_yaml = (IAP_ROLE_ID, IAP_ROLE_YAML) if iap else (WINDOW_ROLE_ID, WINDOW_ROLE_YAML)
    p = t.project
    pool_path = f"projects/$PROJECT_NUMBER/locations/global/workloadIdentityPools/{t.pool}"
    lines = [
        "wrote " + ", ".join(written),
        "",
        "Next steps:",
        "",
        "1. Look at ai-deploy.toml (`ai-deploy config -e ENV` shows the merged settings) and",
        "   commit it with .github/workflows/ai-cicd.yml.",
        "",
        f"2. GCP, once (project {p}):",
        "",
        f"PROJECT_NUMBER=$(gcloud projects describe {p} --format='value(projectNumber)')",
        f"gcloud iam workload-identity-pools create {t.pool} --project {p} --location global \\",
        '  --display-name "GitHub Actions"',
        f"gcloud iam workload-identity-pools providers create-oidc {t.provider} --project {p} \\",
        f"  --location global --workload-identity-pool {t.pool} \\",
        "  --issuer-uri https://token.actions.githubusercontent.com \\",
        '  --attribute-mapping "google.subject=assertion.sub,'
        'attribute.repository=assertion.repository" \\',
        f"  --attribute-condition \"assertion.repository == '{t.repository}'\"",
        f"gcloud iam service-accounts create {t.service_account} --project {p} \\",
        '  --display-name "ai-deploy"',
        f"gcloud iam service-accounts add-iam-policy-binding {t.sa_email} --project {p} \\",
        "  --role roles/iam.workloadIdentityUser \\",
        f'  --member "principalSet://iam.googleapis.com/{pool_path}/attribute.repository/{t.repository}"',
        "cat > role.yaml <<'ROLE'",
        role_yaml.rstrip("\n"),
        "ROLE",
        f"gcloud iam roles create {role_id} --project {p} --file role.yaml",
        f"gcloud projects add-iam-policy-binding {p} --member serviceAccount:{t.sa_email} \\",
        f"  --role projects/{p}/roles/{role_id}",
        f"gcloud compute instances add-tags {t.instance} --project {p} --zone {t.zone} \\",
        f"  --tags {t.tag}",
        f"gcloud compute instances add-metadata {t.instance} --project {p} --zone {t.zone} \\",
        "  --metadata enable-guest-attributes=TRUE",
    ]
    if iap:
        lines += [
            create_rule_command(p, t.network, t.tag),
            f"gcloud projects add-iam-policy-binding {p} --member serviceAccount:{t.sa_email} \\",
            f"  --role {IAP_ROLE}",
        ]
    lines += [
        "",
        f"3. GitHub, once (environment {t.environment} of {t.repository}):",
        "",
        f"gh api -X PUT repos/{t.repository}/environments/{t.environment}",
        f"gh secret set GCP_PROJECT_ID --env {t.environment} --body {p}",
        f"gh secret set GCP_ZONE --env {t.environment} --body {t.zone}",
        f"gh secret set GCP_INSTANCE --env {t.environment} --body {t.instance}",
        f"gh secret set WORKLOAD_IDENTITY_PROVIDER --env {t.environment} \\",
        f'  --body "{pool_path}/providers/{t.provider}"',
        f"gh secret set GCP_SERVICE_ACCOUNT --env {t.environment} --body {t.sa_email}",
        f"gh variable set AI_DEPLOY_SOURCE --body '{TOOL_SOURCE}'",
    ]
    if iap:
        lines += [
            "(set AI_DEPLOY_SSH_TRANSPORT: iap in the Deploy step's env: the VM needs no",
            " external SSH and no rule is created per deploy)",
        ]
    lines += [
        "",
        "4. The app's secrets: put its .env on the VM once, at APP_ROOT/.env (/app/ai-server/.env",
        "   by default; the deploy keeps it, 0600, owned by the service user), or set env_default",
        "   or env_allow_empty in ai-deploy.toml. A host without one stops the deploy, saying so.",
        "",
        "5. First deploy: merge to main (the workflow builds, deploys and checks /health), or",
        f"   from here: ai-deploy artifact build . -o dist && GCP_PROJECT_ID={p} "
        f"GCP_ZONE={t.zone} GCP_INSTANCE={t.instance} ai-deploy deploy -e {t.environment} "
        "--artifact dist/<file>.tar.gz",
        f"   Day 2: ai-deploy status -e {t.environment}, logs, releases, rollback, exec -- CMD",
        "   (with GCP_* set they open the same short-lived access a deploy does).",
    ]
    return "\n".join(lines)


def unfilled(t: Target, app_dir: str) -> list[str]:
    """One warning per placeholder left in the printed commands, each naming how to fill it."""
    d = Target()
    given = [
        (t.project, d.project, "--project", "the GCP project id"),
        (t.zone, d.zone, "--zone", "the instance's zone"),
        (t.instance, d.instance, "--instance", "the GPU VM's name"),
    ]
    said = [
        f"{placeholder} is a placeholder in the commands below ({what}): run init again "
        f"with {flag} (and --force), or replace it when you run them"
        for value, placeholder, flag, what in given
        if value == placeholder
    ]
    if t.repository == d.repository:
        said.append(
            f"{d.repository} is a placeholder in the commands below (the GitHub repository that "
            f"deploys): {app_dir} has no GitHub `origin` remote; run init again with "
            "--repository OWNER/REPO (and --force), or add the remote first"
        )
    said.append(
        f"AI_DEPLOY_SOURCE is a placeholder ({TOOL_SOURCE}): set it to where your team "
        "installs ai-deploy from, pinned (anything `uv tool install` accepts)"
    )
    return said


__all__ = ["Target", "next_steps", "unfilled"]
