"""The drop-in workflow, rehearsed: an app repository made from examples/ai-server, `ai-deploy
init` run in it with the real CLI, the commit pushed to main, and the workflow it wrote
(.github/workflows/ai-cicd.yml: lint-test -> build-and-artifact -> deploy) run from its YAML,
job by job, step by step, on a local stand-in for a GitHub-hosted runner (tests/gcp/rehearsal.py).

Every `run:` step runs as written, with GitHub's default shell and the variables a runner sets
(GITHUB_SHA, GITHUB_STEP_SUMMARY, GITHUB_ENV, RUNNER_TEMP, ...); uv reaches the real package
registry, so the example's locked dependencies, `uvx ruff@<pin>` and ai-deploy's dependencies
resolve as on a runner. vars.AI_DEPLOY_SOURCE is a wheel of this tree, so `uvx --from` (build)
and `uv tool install` (deploy) run as written. `ai-deploy deploy -e production` reaches the
loopback GCP fake and a sandbox host playing the VM, with tests/gcp/flowkit.py's FirewallMirror,
GuestAgent and MyIpServer. The variables pointing the tool at the fake (AI_DEPLOY_COMPUTE_ENDPOINT,
AI_DEPLOY_OSLOGIN_ENDPOINT, AI_DEPLOY_MYIP_* and the IP service's CA in REQUESTS_CA_BUNDLE,
ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN of the fake's OIDC endpoint, GITHUB_API_URL) are the deploy
job's runner environment: they stand for the Google endpoints, ipify and GitHub's own services.
Around the run, as an operator has it: the VM's .env put there once, guest attributes on (the
fake publishes the host's real SSH host keys, so the deploy pins them), a rule left by a
cancelled run (swept with the workflow's GITHUB_TOKEN), Slack's webhook set, Discord's unset.

Stand-ins for the `uses:` steps (any other action, input or expression fails the test):
- actions/checkout: a depth-1 `git clone` of the app repository's main, checked out detached
  at GITHUB_SHA, `sparse-checkout` (no-cone) honoured; no credentials are kept.
- astral-sh/setup-uv: the machine's uv (and uvx) on PATH with its tool bin directory, a tool
  directory per job, one uv cache for the run (a real runner starts empty every job),
  UV_PYTHON_DOWNLOADS=never; `python-version` becomes UV_PYTHON pointing at an interpreter of
  that version already here (the real action would download one; not pinned if none is here).
- actions/upload-artifact / download-artifact: a per-run directory keyed by artifact `name`;
  the `path:` globs are matched in the workspace and stored relative to their common root, as
  the real action does; `if-no-files-found: error` fails the step when nothing matches.
- google-github-actions/auth: the fake's external_account file (STS audience from the
  workload_identity_provider secret, impersonation of the service_account secret) written as
  gha-creds-*.json in the workspace, GOOGLE_APPLICATION_CREDENTIALS,
  CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE, GOOGLE_GHA_CREDS_PATH and the project variables
  exported; refused without `id-token: write`; the file is removed in the post step.

Only a real GitHub run shows: that the pinned action SHAs exist and behave as stood in for,
the runner image's tools and Python downloads, secrets and variables as GitHub stores them,
environment protection, `concurrency` and cancellation, permissions enforced on GITHUB_TOKEN,
artifact storage, and Google's real IAM, firewall and guest agent (the fake and stand-ins play
them). Needs root (a sandbox host, nftables) and the package registry through uv.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp
from tests.gcp.flowkit import (
    REPO_ROOT,
    FirewallMirror,
    GuestAgent,
    MyIpServer,
    WebhookReceiver,
    guest_output,
    slack_facts,
    ssh_port_state,
)
from tests.gcp.rehearsal import BASE_PATH, Action, Contexts, Job, Runner, StepRecord, check_inputs

pytestmark = [pytest.mark.gcp]

REPOSITORY = "dojangkok/ai-server"
APP = "ai-server"
ENVIRONMENT = "production"
DEPLOY_USER = "ai-deploy"
# What the operator puts on the VM once (the workflow never carries the app's secrets).
ENV_FILE = "/app/ai-server/.env"
ENV_TEXT = "MODEL_LOAD_SECONDS=1\n"
# What google-github-actions/auth exports for the project (taken from the service account).
PROJECT_VARS = (
    "CLOUDSDK_CORE_PROJECT CLOUDSDK_PROJECT GCLOUD_PROJECT GCP_PROJECT GOOGLE_CLOUD_PROJECT"
)


# --- the stand-ins tied to this machine and to the fake ---------------------------------------


def real_uv() -> Path:
    """The machine's uv binary, not a pyenv shim (a script that finds it)."""
    found = Path(shutil.which("uv") or "uv")
    if found.is_file() and found.read_bytes()[:4] != b"\x7fELF" and shutil.which("pyenv"):
        which = subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True)
        found = Path(which.stdout.strip() or found)
    if not found.is_file() or found.read_bytes()[:4] != b"\x7fELF":
        raise AssertionError(f"no uv binary on PATH ({found})")
    return found.resolve()


def local_python(version: str) -> Path | None:
    """An interpreter of VERSION already on this machine (the runner may not download one)."""
    proc = subprocess.run(
        [str(real_uv()), "python", "find", "--no-python-downloads", version],
        capture_output=True,
        text=True,
        env={"PATH": BASE_PATH, "HOME": str(Path.home())},
        timeout=60,
    )
    if proc.returncode == 0 and proc.stdout.strip():
        return Path(proc.stdout.strip())
    candidates = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    candidates += [Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    return next((c for c in candidates if c.is_file()), None)


def setup_uv(uv_cache: Path) -> Action:
    """astral-sh/setup-uv: this machine's uv on PATH, the job's own tool directories."""

    def setup(job: Job, inputs: dict[str, str]) -> str:
        check_inputs(inputs, {"python-version", "enable-cache"}, "astral-sh/setup-uv")
        tool, uv = job.root / "uv-tool", real_uv()
        (tool / "uv").mkdir(parents=True)
        for name in ("uv", "uvx"):
            (tool / "uv" / name).symlink_to(uv.with_name(name))
        job.add_path(tool / "bin")
        job.add_path(tool / "uv")
        job.export({"UV_CACHE_DIR": str(uv_cache), "UV_PYTHON_DOWNLOADS": "never"})
        job.export({"UV_TOOL_DIR": str(tool / "tools"), "UV_TOOL_BIN_DIR": str(tool / "bin")})
        did = f"uv {uv} and the tool bin directory {tool / 'bin'} on PATH"
        version = inputs.get("python-version")
        if version:
            found = local_python(version)
            if found is None:
                return f"{did}; no Python {version} on this machine: not pinned"
            job.export({"UV_PYTHON": str(found)})
            did += f", UV_PYTHON={found} (python-version {version})"
        return did

    return setup


def google_auth(fake: FakeGcp) -> Action:
    """google-github-actions/auth: the fake's external_account file in the workspace and the
    variables the action exports; the file is removed by the post step."""

    def auth(job: Job, inputs: dict[str, str]) -> str:
        keys = {"workload_identity_provider", "service_account"}
        check_inputs(inputs, keys, "google-github-actions/auth")
        permitted = (job.spec.get("permissions") or {}).get("id-token") == "write"
        if not permitted or "ACTIONS_ID_TOKEN_REQUEST_URL" not in job.env:
            raise ValueError("no OIDC token: the job lacks permissions id-token: write")
        provider, account = inputs["workload_identity_provider"], inputs["service_account"]
        if not provider or not account:
            raise ValueError("workload_identity_provider and service_account are required")
        info = fake.external_account_info(
            service_account=account, audience=f"//iam.googleapis.com/{provider}"
        )
        path = job.workspace / f"gha-creds-{secrets.token_hex(12)}.json"
        path.write_text(json.dumps(info))
        path.chmod(0o600)
        project = account.split("@", 1)[1].split(".", 1)[0]
        job.export(dict.fromkeys(PROJECT_VARS.split(), project))
        for name in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"):
            job.export({name: str(path), "GOOGLE_GHA_CREDS_PATH": str(path)})
        job.post.append(lambda: (path.unlink(missing_ok=True), f"removed {path.name}")[1])
        return f"wrote {path.name} (external_account impersonating {account})"

    return auth


# --- the app repository, ai-deploy, the VM --------------------------------------------------


@pytest.fixture(scope="module")
def rehearse_host() -> Iterator[Host]:
    """One sandbox host: the fake instance's external address points at it."""
    if os.geteuid() != 0:
        pytest.fail("this test boots a systemd-nspawn sandbox host and needs root")
    name = f"rehearse-{secrets.token_hex(3)}"
    started, _ = hosts.up(count=1, name=name)
    try:
        yield started[0]
    finally:
        hosts.down([name])


@pytest.fixture(scope="module")
def ai_deploy_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this tree: what vars.AI_DEPLOY_SOURCE names (as a git URL would)."""
    dist = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [str(real_uv()), "build", "--wheel", "-q", "-o", str(dist), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("*.whl")
    return wheel


def _git(repo: Path, *args: str) -> str:
    identity = ("-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false")
    return subprocess.run(
        ["git", *identity, "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def _app_repository(root: Path, fake: FakeGcp) -> tuple[Path, str]:
    """examples/ai-server as its own repository with what `ai-deploy init` writes, committed
    on main; returns the repository and the commit."""
    repo = root / APP
    shutil.copytree(
        REPO_ROOT / "examples" / APP,
        repo,
        ignore=shutil.ignore_patterns(".venv", "__pycache__", ".env*", ".pytest_cache"),
    )
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "The AI server")
    target = ["--project", fake.state.project, "--zone", fake.state.instance.zone]
    target += ["--instance", fake.state.instance.name, "--repository", REPOSITORY]
    init_and_commit(repo, *target)
    return repo, _git(repo, "rev-parse", "HEAD")


def init_and_commit(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ai-deploy init ARGS -e production .` in REPO, its files committed."""
    init = subprocess.run(
        [sys.executable, "-m", "ai_deploy.cli", "init", *args, "-e", ENVIRONMENT, "."],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"$ ai-deploy init\n{init.stdout}{init.stderr}(exit {init.returncode})")
    assert init.returncode == 0, init.stderr
    _git(repo, "add", "ai-deploy.toml", ".github/workflows/ai-cicd.yml")
    _git(repo, "commit", "-q", "-m", "Deploy with ai-deploy")
    return init


def _failed_steps(jobs: dict[str, Job]) -> str:
    return "\n".join(
        f"{job_id}: {step.name} (exit {step.exit_code})\n{step.log[-3000:]}"
        for job_id, job in jobs.items()
        for step in job.steps
        if step.exit_code
    )


def _step(jobs: dict[str, Job], job: str, name: str) -> StepRecord:
    (found,) = [s for s in jobs[job].steps if s.name == name]
    return found


def test_the_workflow_init_writes_lints_builds_and_deploys_through_a_window_that_closes(
    gcp_fake: FakeGcp, rehearse_host: Host, ai_deploy_wheel: Path, tmp_path: Path
) -> None:
    fake, host = gcp_fake, rehearse_host
    with fake.lock:
        fake.state.instance.nat_ip = host.address
        fake.state.instance.tags = ["ai-server"]
    run_id = str(7_000_000_000 + secrets.randbelow(999_999_999))
    # A run cancelled mid-deploy left its rule (live for 50 more minutes); GitHub says that run
    # is over, which the deploy can only ask with the token the workflow passes it.
    cancelled = str(int(run_id) - 1)
    expires = f"{datetime.now(timezone.utc) + timedelta(minutes=50):%Y-%m-%dT%H:%M:%SZ}"
    leftover = f"ai-deploy-ssh-{cancelled}-1-abcd"
    marks = f"x; ai-deploy-run={cancelled}-1 ai-deploy-expires={expires}"
    fake.add_firewall(leftover, source_ranges=["192.0.2.9/32"], description=marks)
    with fake.lock:
        fake.state.github_runs.update({run_id: "in_progress", cancelled: "completed"})
    guest_output(
        host,
        f"mkdir -p {ENV_FILE.rsplit('/', 1)[0]} && umask 077 && "
        f"printf %s {shlex.quote(ENV_TEXT)} > {ENV_FILE}",
    )
    # Guest attributes on (init's set-up enables them): the guest agent publishes the host keys.
    found = guest_output(host, "cat /etc/ssh/ssh_host_*_key.pub").splitlines()
    fake.publish_host_keys(dict(line.split()[:2] for line in found))
    repo, sha = _app_repository(tmp_path, fake)

    myip, hooks = MyIpServer(host.index), WebhookReceiver()
    mirror, agent = FirewallMirror(fake, host), GuestAgent(fake, host)
    contexts = Contexts(
        secrets={
            "GCP_PROJECT_ID": fake.state.project,
            "GCP_ZONE": fake.state.instance.zone,
            "GCP_INSTANCE": fake.state.instance.name,
            "WORKLOAD_IDENTITY_PROVIDER": fake.state.workload_identity_provider,
            "GCP_SERVICE_ACCOUNT": fake.state.service_account,
            "SLACK_WEBHOOK_URL": hooks.slack_url,  # DISCORD_WEBHOOK_URL left unset
        },
        vars={"AI_DEPLOY_SOURCE": str(ai_deploy_wheel)},
        sha=sha,
        ref="refs/heads/main",
        token=fake.state.github_token,
    )

    def runner_env(job: str, permissions: dict[str, Any]) -> dict[str, str]:
        env = {
            "AI_DEPLOY_COMPUTE_ENDPOINT": fake.url,
            "AI_DEPLOY_OSLOGIN_ENDPOINT": fake.oslogin_endpoint,
            **myip.env(),
        }
        if permissions.get("id-token") == "write":  # the runner's OIDC token service
            env.update(fake.github_env())
        return env

    runner = Runner(
        tmp_path / "runner",
        repo,
        contexts,
        repository=REPOSITORY,
        run_id=run_id,
        api_url=fake.github_api_env()["GITHUB_API_URL"],
        runner_env=runner_env,
        actions={
            "astral-sh/setup-uv": setup_uv(tmp_path / "runner" / "uv-cache"),
            "google-github-actions/auth": google_auth(fake),
        },
    )
    try:
        mirror.install()
        agent.start()
        assert ssh_port_state(host.address) == "refused"
        try:
            jobs = runner.run(repo / ".github" / "workflows" / "ai-cicd.yml")
        finally:
            print(runner.log())
        outcome = {job_id: job.conclusion for job_id, job in jobs.items()}
        wanted = dict.fromkeys(("lint-test", "build-and-artifact", "deploy"), "success")
        assert outcome == wanted, _failed_steps(jobs)

        # lint-test: the example's locked dependencies, ruff from the registry, its own tests.
        assert "All checks passed!" in _step(jobs, "lint-test", "Lint").log
        assert re.search(r"\b[1-9]\d* passed\b", _step(jobs, "lint-test", "Test").log)

        # The artifact and its .sha256, uploaded by the build job and downloaded by the deploy.
        tarball = f"{APP}-{sha}.tar.gz"
        stored = runner.artifacts / f"{APP}-{sha}"
        assert sorted(p.name for p in stored.iterdir()) == [tarball, f"{tarball}.sha256"]
        downloaded = jobs["deploy"].workspace / "artifact"
        assert sorted(p.name for p in downloaded.iterdir()) == [tarball, f"{tarball}.sha256"]
        digest = hashlib.sha256((downloaded / tarball).read_bytes()).hexdigest()
        assert (downloaded / f"{tarball}.sha256").read_text().split()[0] == digest

        # The deploy: through Workload Identity Federation, a window for this run, the release
        # named after the commit serving, the summary and the Slack message saying so.
        deploy_log = _step(jobs, "deploy", "Deploy").log
        assert _step(jobs, "deploy", "Deploy").exit_code == 0, deploy_log
        assert re.search(r"pinned \d+ host key", deploy_log)
        assert "accepted on first use" not in deploy_log
        assert fake.requests_to("GET", r"^/github/oidc$")
        assert fake.requests_to("POST", r":generateAccessToken$")
        created = [r.json()["name"] for r in fake.requests_to("POST", r"/global/firewalls$")]
        assert len(created) == 1 and created[0].startswith(f"ai-deploy-ssh-{run_id}-1-"), created
        (asked,) = fake.requests_to("GET", r"/actions/runs/")
        assert asked.path.endswith(f"/repos/{REPOSITORY}/actions/runs/{cancelled}")
        assert asked.authorization == f"Bearer {fake.state.github_token}"
        assert fake.requests_to("DELETE", rf"/global/firewalls/{leftover}$")
        reply = requests.get(f"http://{host.address}:8000/health", timeout=10)
        assert reply.status_code == 200 and reply.json()["release"] == sha, reply.text
        summary = jobs["deploy"].summary.read_text()
        print(f"job summary of deploy:\n{summary}")
        assert "deploy succeeded" in summary, summary
        assert f"| Release | `{sha}` |" in summary and "| Outcome | success |" in summary
        assert f"https://github.com/{REPOSITORY}/actions/runs/{run_id}" in summary
        (slack,) = hooks.received("slack")
        assert slack_facts(slack)["release"] == sha and slack_facts(slack)["outcome"] == "success"
        assert hooks.received("discord") == []  # an unset secret is an empty value: no message

        # The window is closed: no rule, no ssh-keys entry, SSH refused, the key gone.
        with fake.lock:
            assert fake.state.firewalls == {}, fake.state.firewalls
            assert "ssh-keys" not in fake.state.instance.metadata
        assert mirror.allowed_now() == []
        assert ssh_port_state(host.address) == "refused"
        agent.wait_synced()
        assert agent.authorized_keys(DEPLOY_USER) == []
        assert mirror.errors == [] and agent.errors == []
        assert not list(jobs["deploy"].workspace.glob("gha-creds-*.json"))
    finally:
        agent.stop()
        mirror.close()
        myip.stop()
        hooks.stop()
