"""What `ai-deploy init` prints after writing the files: the one-time GCP set-up (Workload
Identity pool and provider, the deploying service account, the custom role of the chosen access
mode, the instance's tag and guest attributes, the IAP rule) and the GitHub set-up (the
environment, limited to main, and its secrets), as commands with the names filled in.

The provider admits a GitHub token only when it comes from the repository's number (an id
survives a rename and cannot be claimed by whoever takes the old name), from a job in the
deploy's environment, on refs/heads/main; the environment accepts main only. So a workflow on
another branch, or a pull request that edits one to ask for `id-token: write`, cannot act as
the deploy account. Every value is shell-quoted, and CEL-quoted inside the condition (init
checks their shapes first, see ai_deploy.appinit.values)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ai_deploy.gcp.iap import IAP_ROLE, create_rule_command
from ai_deploy.gcp.permissions import IAP_ROLE_ID, IAP_ROLE_YAML, WINDOW_ROLE_ID, WINDOW_ROLE_YAML

PLACEHOLDER_PROJECT = "PROJECT_ID"
DEPLOY_REF = "refs/heads/main"  # the workflow deploys on pushes to main only
TOOL_SOURCE = "git+https://github.com/OWNER/ai-deploy@<commit>"  # no way to know it here


@dataclass(frozen=True)
class Target:
    """What the commands are filled in with (placeholders where init was not told)."""

    project: str = PLACEHOLDER_PROJECT
    zone: str = "ZONE"
    instance: str = "INSTANCE"
    repository: str = "OWNER/REPO"
    repository_id: str | None = None  # None: the printed set-up asks `gh api` for it
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


def cel(value: str) -> str:
    """VALUE as a CEL string literal (single quotes, backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def in_double_quotes(text: str) -> str:
    """TEXT escaped for a double-quoted shell word: nothing in it expands."""
    for char in '\\$`"':
        text = text.replace(char, "\\" + char)
    return text


def wif_condition(t: Target) -> str:
    """The provider's attribute condition, double-quoted for the shell; $REPOSITORY_ID is the
    one thing the shell fills in (set the line before, from the value or from `gh api`)."""
    environment = in_double_quotes(cel(t.environment))
    ref = in_double_quotes(cel(DEPLOY_REF))
    return (
        "\"assertion.repository_id == '$REPOSITORY_ID'"
        f' && assertion.environment == {environment} && assertion.ref == {ref}"'
    )


def next_steps(t: Target, written: list[str]) -> str:
    iap = t.transport == "iap"
    role_id, role_yaml = (IAP_ROLE_ID, IAP_ROLE_YAML) if iap else (WINDOW_ROLE_ID, WINDOW_ROLE_YAML)
    q = shlex.quote
    p, sa, repo, env = q(t.project), q(t.sa_email), q(t.repository), q(t.environment)
    pool_path = (
        "projects/$PROJECT_NUMBER/locations/global/workloadIdentityPools/"
        + in_double_quotes(t.pool)
    )
    repository_id = (
        f"REPOSITORY_ID={q(t.repository_id)}"
        if t.repository_id
        else f"REPOSITORY_ID=$(gh api repos/{repo} --jq .id)  # the repository's number"
    )
    lines = [
        "wrote " + ", ".join(written),
        "",
        "Next steps:",
        "",
        "1. Look at ai-deploy.toml (`ai-deploy config -e ENV` shows the merged settings) and",
        "   commit it with .github/workflows/ai-cicd.yml.",
        "",
        f"2. GCP, once (project {t.project}). The provider admits only the deploy job of",
        f"   repository number {t.repository_id or '$REPOSITORY_ID'} ({t.repository}), in "
        f"environment {t.environment},",
        f"   on {DEPLOY_REF}: no other branch, pull request or repository.",
        "",
        repository_id,
        f"PROJECT_NUMBER=$(gcloud projects describe {p} --format='value(projectNumber)')",
        f"gcloud iam workload-identity-pools create {q(t.pool)} --project {p} --location global \\",
        '  --display-name "GitHub Actions"',
        "gcloud iam workload-identity-pools providers create-oidc "
        f"{q(t.provider)} --project {p} \\",
        f"  --location global --workload-identity-pool {q(t.pool)} \\",
        "  --issuer-uri https://token.actions.githubusercontent.com \\",
        '  --attribute-mapping "google.subject=assertion.sub,'
        'attribute.repository_id=assertion.repository_id" \\',
        f"  --attribute-condition {wif_condition(t)}",
        f"gcloud iam service-accounts create {q(t.service_account)} --project {p} \\",
        '  --display-name "ai-deploy"',
        f"gcloud iam service-accounts add-iam-policy-binding {sa} --project {p} \\",
        "  --role roles/iam.workloadIdentityUser \\",
        f'  --member "principalSet://iam.googleapis.com/{pool_path}/attribute.repository_id/'
        '$REPOSITORY_ID"',
        "cat > role.yaml <<'ROLE'",
        role_yaml.rstrip("\n"),
        "ROLE",
        f"gcloud iam roles create {role_id} --project {p} --file role.yaml",
        f"gcloud projects add-iam-policy-binding {p} --member serviceAccount:{sa} \\",
        f"  --role projects/{p}/roles/{role_id}",
        f"gcloud compute instances add-tags {q(t.instance)} --project {p} --zone {q(t.zone)} \\",
        f"  --tags {q(t.tag)}",
        f"gcloud compute instances add-metadata {q(t.instance)} --project {p} "
        f"--zone {q(t.zone)} \\",
        "  --metadata enable-guest-attributes=TRUE",
    ]
    if iap:
        lines += [
            create_rule_command(p, q(t.network), q(t.tag)),
            f"gcloud projects add-iam-policy-binding {p} --member serviceAccount:{sa} \\",
            f"  --role {IAP_ROLE}",
        ]
    environment = f"repos/{repo}/environments/{env}"
    lines += [
        "",
        f"3. GitHub, once (environment {t.environment} of {t.repository}, deployed from main "
        "only):",
        "",
        f"gh api -X PUT {environment} \\",
        "  -F 'deployment_branch_policy[protected_branches]=false' \\",
        "  -F 'deployment_branch_policy[custom_branch_policies]=true'",
        f"gh api -X POST {environment}/deployment-branch-policies -f name=main -f type=branch",
        f"gh secret set GCP_PROJECT_ID --env {env} --body {p}",
        f"gh secret set GCP_ZONE --env {env} --body {q(t.zone)}",
        f"gh secret set GCP_INSTANCE --env {env} --body {q(t.instance)}",
        f"gh secret set WORKLOAD_IDENTITY_PROVIDER --env {env} \\",
        f'  --body "{pool_path}/providers/{in_double_quotes(t.provider)}"',
        f"gh secret set GCP_SERVICE_ACCOUNT --env {env} --body {sa}",
        f"gh variable set AI_DEPLOY_SOURCE --body {q(TOOL_SOURCE)}",
    ]
    if iap:
        lines += [
            "(set AI_DEPLOY_SSH_TRANSPORT: iap in the Deploy step's env: the VM needs no",
            " external SSH and no rule is created per deploy)",
        ]
    lines += [
        "",
        '4. The app\'s secrets: name a local file in ai-deploy.toml (env_file = ".env", relative',
        "   to it; never commit it), or put it on the VM once at <app_root>/.env (/app/<app_name>/",
        "   .env by default). The deploy keeps it, 0600, owned by the service user; env_default or",
        "   env_allow_empty cover a host with none, which otherwise stops the deploy, saying so.",
        "",
        "5. First deploy: merge to main (the workflow builds, deploys and checks /health), or",
        f"   from here: ai-deploy artifact build . -o dist && GCP_PROJECT_ID={p} "
        f"GCP_ZONE={q(t.zone)} GCP_INSTANCE={q(t.instance)} ai-deploy deploy -e {env} "
        "--artifact dist/<file>.tar.gz",
        f"   Day 2: ai-deploy status -e {env}, logs, releases, rollback, exec -- CMD",
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


__all__ = [
    "DEPLOY_REF",
    "Target",
    "cel",
    "in_double_quotes",
    "next_steps",
    "unfilled",
    "wif_condition",
]
