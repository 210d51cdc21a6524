"""`ai-deploy deploy` end to end: the real google-auth and google-cloud-compute libraries against
the loopback Compute/STS/IAM fake, whose instance is a sandbox host.

The harness (tests/gcp/flowkit.py) plays what surrounds a GCP VM: a "what is my IP" service,
the guest agent (metadata `ssh-keys` -> users and authorized_keys on the host) and the VPC
firewall (the fake's rules mirrored into nftables, so SSH to the host works only while a rule
lets the runner's address reach tcp:22 of the host's tag). The deploy runs as a child process,
exactly as CI runs it, and talks only to loopback and the sandbox guest.

Needs root: it boots a sandbox host and changes nftables.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from ai_deploy.artifact.build import build_artifact
from ai_deploy.artifact.check import check_artifact
from ai_deploy.gcp.auth import load_credentials
from ai_deploy.gcp.firewall import firewall_window
from ai_deploy.gcp.permissions import WINDOW_PERMISSIONS
from ai_deploy.gcp.sshkeys import generate_key_pair, ssh_keys_entry
from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp
from tests.gcp.flowkit import (
    REPO_ROOT,
    DeployProcess,
    FirewallMirror,
    GuestAgent,
    MyIpServer,
    PortProbe,
    WebhookReceiver,
    deploy_environment,
    discord_facts,
    guest_output,
    iter_ssh_keys_writes,
    mutating_compute_requests,
    process_alive,
    slack_facts,
    ssh_port_state,
    wait_until,
)
from tests.gcp.permission_table import compute_permissions

pytestmark = [pytest.mark.gcp]

RULE_PREFIX = "ai-deploy-ssh-"
DEPLOY_USER = "ai-deploy"  # the ephemeral key's login (AI_DEPLOY_SSH_USER's default)
# The seed's secrets: the app reads its .env; a short model load keeps deploys quick.
ENV_FILE_TEXT = "MODEL_LOAD_SECONDS=1\n"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vm_host() -> Iterator[Host]:
    """One sandbox host for the module: the fake instance's external address points at it."""
    if os.geteuid() != 0:
        pytest.fail("these tests boot a systemd-nspawn sandbox host and need root")
    name = f"gcpflow-{secrets.token_hex(3)}"
    started, _ = hosts.up(count=1, name=name)
    try:
        yield started[0]
    finally:
        hosts.down([name])


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flow")
    (path / "ai-server.env").write_text(ENV_FILE_TEXT)
    return path


@dataclass
class Release:
    path: Path
    release_id: str


@pytest.fixture(scope="module")
def make_release(build_dir: Path) -> Callable[[str], Release]:
    """The example AI server as an artifact whose release id is unique to this test run."""
    made: dict[str, Release] = {}

    def make(label: str) -> Release:
        if label not in made:
            path = build_artifact(
                REPO_ROOT / "examples" / "ai-server",
                build_dir,
                artifact_id=f"{label}-{secrets.token_hex(4)}",
            )
            made[label] = Release(path, check_artifact(path).release_id)
        return made[label]

    return make


@pytest.fixture(scope="module")
def outside_unhealthy_release(build_dir: Path) -> Release:
    """The example app changed so that /health is fine from the host itself (the deploy's
    health gate passes) but 503 from anywhere else: only the outside check sees it."""
    src = build_dir / "outside-unhealthy"
    shutil.copytree(REPO_ROOT / "examples" / "ai-server", src, ignore=_ignore_local)
    main = src / "main.py"
    text = main.read_text()
    text = text.replace("from fastapi import FastAPI\n", "from fastapi import FastAPI, Request\n")
    text = text.replace(
        "async def health() -> JSONResponse:\n",
        "async def health(request: Request) -> JSONResponse:\n"
        '    if request.client is None or request.client.host != "127.0.0.1":\n'
        '        return JSONResponse(status_code=503, content={"status": "unreachable"})\n',
    )
    assert "request.client.host" in text, "examples/ai-server/main.py changed: adapt this fixture"
    main.write_text(text)
    path = build_artifact(src, build_dir, artifact_id=f"outside-{secrets.token_hex(4)}")
    return Release(path, check_artifact(path).release_id)


APP_SECRET = "sk-" + "proj-Zq8Xw3Lr5Nt7Vb9Kc2"  # in the app's exception, so in its error log


@pytest.fixture(scope="module")
def secret_crash_release(build_dir: Path) -> Release:
    """The example app failing at import with its API key in the exception's message, as an
    SDK's authentication error can: the traceback lands in the release's error log."""
    src = build_dir / "secret-crash"
    shutil.copytree(REPO_ROOT / "examples" / "ai-server", src, ignore=_ignore_local)
    main = src / "main.py"
    main.write_text(
        main.read_text()
        + '\n\nraise RuntimeError("the provider refused OPENAI_API_KEY=" + '
        + repr(APP_SECRET)
        + ")\n"
    )
    path = build_artifact(src, build_dir, artifact_id=f"secret-{secrets.token_hex(4)}")
    return Release(path, check_artifact(path).release_id)


def _ignore_local(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in (".venv", "__pycache__") or n.startswith(".env")}


@dataclass
class Flow:
    """Everything one test drives: the fake, the host and the stand-ins around them."""

    fake: FakeGcp
    host: Host
    myip: MyIpServer
    hooks: WebhookReceiver
    mirror: FirewallMirror
    agent: GuestAgent
    env_file: Path
    processes: list[DeployProcess] = field(default_factory=list)

    @property
    def runner_range(self) -> str:
        return f"{self.myip.address}/32"

    def start(self, *args: str, env: dict[str, str] | None = None) -> DeployProcess:
        """`ai-deploy deploy ARGS` as CI runs it, with the fake's settings."""
        extra = {**self.myip.env(), **self.hooks.env(), **(env or {})}
        process = DeployProcess(list(args), deploy_environment(os.environ, self.fake, extra))
        self.processes.append(process)
        return process

    def deploy(
        self,
        release: Release | None,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 300.0,
    ) -> tuple[int, str]:
        """Run a deploy to the end; returns (exit code, output)."""
        argv = ["--health-interval", "1", *args]
        if release is not None:
            argv = ["--artifact", str(release.path), *argv]
        process = self.start(*argv, env=env)
        code = process.finish(timeout=timeout)
        print(f"$ ai-deploy deploy {' '.join(argv)}\n{process.output}\n(exit {code})")
        return code, process.output

    def env_data(self) -> str:
        return f"env_file={self.env_file}"

    def assert_nothing_left(self, output: str) -> None:
        """No rule and no ssh-keys entry in the fake; the host enforces that (no SSH, no key)."""
        with self.fake.lock:
            rules = sorted(self.fake.state.firewalls)
            metadata = dict(self.fake.state.instance.metadata)
        assert rules == [], f"firewall rules left: {rules}\n{output}"
        assert "ssh-keys" not in metadata, f"ssh-keys left: {metadata}\n{output}"
        with self.fake.lock:
            oslogin = {user: keys for user, keys in self.fake.state.oslogin_keys.items() if keys}
        assert oslogin == {}, f"OS Login keys left: {oslogin}\n{output}"
        assert self.mirror.allowed_now() == []
        assert ssh_port_state(self.host.address) == "refused"
        self.agent.wait_synced()
        assert self.agent.authorized_keys(DEPLOY_USER) == []
        assert self.mirror.errors == [] and self.agent.errors == []

    def rules_created(self) -> list[dict]:
        return [r.json() for r in self.fake.requests_to("POST", r"/global/firewalls$")]

    def rules_deleted(self) -> list[str]:
        return [
            r.path.rsplit("/", 1)[-1]
            for r in self.fake.requests_to("DELETE", r"/global/firewalls/")
        ]

    def release_served(self) -> str:
        reply = requests.get(f"http://{self.host.address}:8000/health", timeout=5)
        assert reply.status_code == 200, reply.text
        return reply.json()["release"]


@pytest.fixture
def flow(
    gcp_fake: FakeGcp,
    github_workload_identity: Callable[..., Path],
    vm_host: Host,
    build_dir: Path,
) -> Iterator[Flow]:
    # Credentials exactly as google-github-actions/auth leaves them, impersonating the SA.
    github_workload_identity()
    with gcp_fake.lock:
        gcp_fake.state.instance.nat_ip = vm_host.address
        gcp_fake.state.instance.tags = ["ai-server"]
    myip = MyIpServer(vm_host.index)
    hooks = WebhookReceiver()
    mirror = FirewallMirror(gcp_fake, vm_host)
    agent = GuestAgent(gcp_fake, vm_host)
    state = Flow(gcp_fake, vm_host, myip, hooks, mirror, agent, build_dir / "ai-server.env")
    try:
        mirror.install()
        agent.start()
        yield state
    finally:
        for process in state.processes:
            process.kill()
        agent.stop()
        mirror.close()
        myip.stop()
        hooks.stop()


def _one_notification_each(flow: Flow, release: str, outcome: str) -> dict[str, dict]:
    slack, discord = flow.hooks.received("slack"), flow.hooks.received("discord")
    assert len(slack) == 1, slack
    assert len(discord) == 1, discord
    facts = {"slack": slack_facts(slack[0]), "discord": discord_facts(discord[0])}
    for kind, seen in facts.items():
        assert seen.get("release") == release, (kind, seen)
        assert seen.get("outcome") == outcome, (kind, seen)
    return facts


def _fingerprint(public_key: str, tmp: Path) -> str:
    path = tmp / "key.pub"
    path.write_text(public_key + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


# --- the harness itself --------------------------------------------------------------------


def test_sandbox_enforces_the_fakes_firewall_and_keys(flow: Flow, tmp_path: Path) -> None:
    """SSH is refused before the window, works inside it, is refused after it; a rule for
    another tag or address opens nothing; the guest agent stand-in installs and removes keys."""
    address = flow.host.address
    assert ssh_port_state(address) == "refused"

    # Rules that must not open the host: another tag, another source address.
    flow.fake.add_firewall("allow-ssh-elsewhere", source_ranges=["192.0.2.7/32"])
    with flow.fake.lock:
        flow.fake.state.firewalls["allow-ssh-db"] = {
            **flow.fake.state.firewalls["allow-ssh-elsewhere"],
            "name": "allow-ssh-db",
            "sourceRanges": [flow.runner_range],
            "targetTags": ["db-server"],
        }
    flow.mirror.sync()
    assert flow.mirror.allowed_now() == ["192.0.2.7/32"]
    assert ssh_port_state(address) == "refused"
    with flow.fake.lock:
        flow.fake.state.firewalls.clear()
    flow.mirror.sync()

    session = load_credentials()
    private, public = generate_key_pair(tmp_path)
    expire = datetime.now(timezone.utc) + timedelta(minutes=5)

    def login() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ssh",
                "-i",
                str(private),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=5",
                f"{DEPLOY_USER}@{address}",
                "sudo -n id -u",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    with firewall_window(
        session.credentials, session.project, source_ip=flow.myip.address, environ={}
    ) as window:
        assert window.source_range == flow.runner_range
        assert flow.mirror.allowed_now() == [flow.runner_range]
        assert ssh_port_state(address) == "open"
        flow.fake.set_metadata("ssh-keys", ssh_keys_entry(DEPLOY_USER, public, expire))
        flow.agent.wait_synced()
        result = login()
        assert result.returncode == 0 and result.stdout.strip() == "0", result.stderr
        flow.fake.set_metadata("ssh-keys", None)
        flow.agent.wait_synced()
        assert login().returncode != 0  # the port is open, the key is gone
        # An entry whose expireOn passed is removed by the agent on its own.
        soon = datetime.now(timezone.utc) + timedelta(seconds=2)
        flow.fake.set_metadata("ssh-keys", ssh_keys_entry(DEPLOY_USER, public, soon))
        flow.agent.wait_synced()
        assert len(flow.agent.authorized_keys(DEPLOY_USER)) == 1
        assert wait_until(lambda: flow.agent.authorized_keys(DEPLOY_USER) == [], timeout=10)
        flow.fake.set_metadata("ssh-keys", None)
    assert flow.fake.state.firewalls == {}
    assert ssh_port_state(address) == "refused"
    assert flow.mirror.errors == [] and flow.agent.errors == []


# --- the full flow -------------------------------------------------------------------------


def test_full_flow_deploys_through_a_window_that_closes(
    flow: Flow, make_release: Callable[[str], Release], tmp_path: Path
) -> None:
    release = make_release("flow")
    fake = flow.fake
    probe = PortProbe(flow.host.address)
    # Look at the host's :22 from inside the run: when the key is written (the window is
    # open by then) and when the rule's delete arrives (still open until it is DONE).
    fake.inject("POST", r"/setMetadata$", status=None, before=lambda _: probe.check("key"))
    fake.inject(
        "DELETE", r"/global/firewalls/", status=None, before=lambda _: probe.check("closing")
    )
    assert probe.check("before") == "refused"
    # Operations that take time, as the real ones do (the insert commonly 5-20 s): each is
    # waited for, with the permission that needs.
    fake.plan_operations("POST", r"/global/firewalls$", running_polls=1, times=None)
    fake.plan_operations("POST", r"/setMetadata$", running_polls=1, times=None)

    code, output = flow.deploy(release, "--data", flow.env_data())

    assert code == 0, output
    assert probe.check("after") == "refused"
    assert probe.states("key") == ["open"] and probe.states("closing") == ["open"], probe.seen

    # Authenticated through Workload Identity Federation with impersonation: GitHub's OIDC
    # token, exchanged at STS, then generateAccessToken; every Compute call carries that token.
    assert fake.requests_to("GET", r"^/github/oidc$")
    assert fake.requests_to("POST", r"^/sts/v1/token$")
    assert fake.requests_to("POST", r":generateAccessToken$")
    compute = [r for r in fake.requests if r.path.startswith("/compute/")]
    assert compute
    tokens = {r.authorization for r in compute}
    assert len(tokens) == 1, tokens
    token = tokens.pop().removeprefix("Bearer ")
    assert token.startswith("ya29.impersonated-")
    assert fake.state.tokens[token]["who"] == fake.state.service_account

    # The window: one rule, tcp:22 from the runner's /32 to the instance's tag, deleted again.
    (rule,) = flow.rules_created()
    assert rule["name"].startswith(f"{RULE_PREFIX}4242-1-")
    assert rule["sourceRanges"] == [flow.runner_range]
    assert rule["targetTags"] == ["ai-server"]
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert flow.rules_deleted() == [rule["name"]]
    assert any(flow.runner_range in ranges for _, ranges in flow.mirror.history)

    # The ephemeral key: written as a gcloud-style expiring entry, installed by the agent,
    # used for the deploy's logins, and removed again.
    writes = list(iter_ssh_keys_writes(fake))
    assert len(writes) == 2 and writes[1] is None, writes
    entry = writes[0]
    assert entry is not None and entry.startswith(f"{DEPLOY_USER}:ssh-ed25519 ")
    stamp = json.loads(entry.split(" google-ssh ", 1)[1])
    assert stamp["userName"] == DEPLOY_USER and stamp["expireOn"].endswith("Z")
    installed = [state for _, state in flow.agent.applied if state.get(DEPLOY_USER)]
    assert installed and installed[0][DEPLOY_USER] == (entry.split(":", 1)[1],)
    fingerprint = _fingerprint(entry.split(":", 1)[1].split(" google-ssh")[0], tmp_path)
    accepted = guest_output(flow.host, "journalctl -q --no-pager -t sshd -g Accepted")
    assert re.search(
        rf"Accepted publickey for {DEPLOY_USER} from .* {re.escape(fingerprint)}", accepted
    )

    # Deployed, healthy from outside, notified once per webhook.
    assert flow.release_served() == release.release_id
    assert guest_output(flow.host, "readlink /app/ai-server/current").strip() == (
        f"releases/{release.release_id}"
    )
    assert f"http://{flow.host.address}:8000/health answered 200 on attempt" in output
    _one_notification_each(flow, release.release_id, "success")
    flow.assert_nothing_left(output)
    # The README's custom role is exactly what this whole run used, but for reading back a
    # rule of the same name (a retried create finding its own rule), which
    # test_custom_role_in_the_readme_is_exactly_what_the_window_mode_calls_need exercises.
    assert compute_permissions(fake.requests) == set(WINDOW_PERMISSIONS) - {"compute.firewalls.get"}


# --- the rule (and the key) go on every way out --------------------------------------------


def test_pyinfra_failure_removes_rule_and_key(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    release = make_release("flow")
    # A log directory the host cannot create (procfs): the run fails on the host, mid-deploy.
    unmakeable = "/proc/ai-deploy-no-such-dir"
    code, output = flow.deploy(
        release, "-v", "--data", flow.env_data(), "--data", f"app_log_dir={unmakeable}"
    )  # fmt: skip (-v: pyinfra's stream)
    assert code == 14, output
    # pyinfra got in through the window (the host is named by its instance)
    assert f"[{flow.fake.state.instance.name}] Connected" in output
    assert f"Ensure the log directory {unmakeable} exists" in output
    assert len(flow.rules_created()) == 1 and len(flow.rules_deleted()) == 1
    facts = _one_notification_each(flow, release.release_id, "failure")
    assert facts["slack"].get("failed phase") == "deploy"
    flow.assert_nothing_left(output)


def test_a_missing_env_file_stops_the_run_before_any_access(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    """The .env named on the command line is looked for on the deployer first: missing, the
    run stops as a settings problem (exit 2) before any window, key or lock."""
    code, output = flow.deploy(make_release("flow"), "--data", "env_file=/nonexistent/app.env")
    assert code == 2, output
    assert "env_file = /nonexistent/app.env (from --data): no such file" in output
    assert flow.rules_created() == []
    flow.assert_nothing_left(output)


def test_outside_health_failure_rolls_back_and_removes_rule_and_key(
    flow: Flow, make_release: Callable[[str], Release], outside_unhealthy_release: Release
) -> None:
    good = make_release("flow")
    code, output = flow.deploy(good, "--data", flow.env_data())
    assert code == 0, output
    assert flow.release_served() == good.release_id
    flow.hooks.deliveries.clear()

    bad = outside_unhealthy_release
    code, output = flow.deploy(bad, "--data", flow.env_data(), "--health-attempts", "2")

    assert code == 15, output
    assert f"deploy of {bad.release_id} healthy" in output  # the host's own gate passed
    assert f"http://{flow.host.address}:8000/health not healthy after 2 attempts" in output
    assert f"switching back {flow.fake.state.instance.name} to {good.release_id}" in output
    assert flow.release_served() == good.release_id  # the previous release is back
    assert len(flow.rules_created()) == 2 and len(flow.rules_deleted()) == 2
    facts = _one_notification_each(flow, bad.release_id, "rollback")
    assert facts["slack"].get("failed phase") == "health"
    flow.assert_nothing_left(output)


def test_health_failure_removes_rule_and_key(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    release = make_release("flow")
    code, output = flow.deploy(
        release,
        "--data",
        flow.env_data(),
        "--health-attempts",
        "2",
        # Nothing listens there: the outside check fails while the host's own gate passes.
        env={"AI_DEPLOY_HEALTH_URL": f"http://{flow.host.address}:8009/health"},
    )
    assert code == 16, output
    assert f"http://{flow.host.address}:8009/health not healthy after 2 attempts" in output
    # 16 either way: a host switched goes back and fails the same check again; a host that had
    # no release before (or already served this one) has nothing to go back to.
    assert len(flow.rules_created()) == 1 and len(flow.rules_deleted()) == 1
    _one_notification_each(flow, release.release_id, "failure")
    flow.assert_nothing_left(output)


def test_exception_right_after_creation_removes_rule(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    release = make_release("flow")
    # Not retryable (a 500 would be retried and succeed): the key step fails for good.
    flow.fake.inject("POST", r"/setMetadata$", status=400, reason="invalid", times=1)
    code, output = flow.deploy(release, "--data", flow.env_data())
    assert code == 13, output
    assert "==> Deploy with pyinfra" not in output
    assert len(flow.rules_created()) == 1
    assert flow.rules_deleted() == [flow.rules_created()[0]["name"]]
    assert len(flow.fake.requests_to("POST", r"/setMetadata$")) == 1
    flow.assert_nothing_left(output)


def test_sigterm_mid_deploy_removes_rule_and_key(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    release = make_release("flow")
    process = flow.start(
        "--artifact", str(release.path), "--health-interval", "1", "--data", flow.env_data(), "-v"
    )
    process.wait_for(r"^--> Starting operation: ", timeout=240)
    children = [
        pid for pid in process.children() if b"pyinfra" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert children, "pyinfra is not running"
    # The ephemeral private key pyinfra logs in with: outside the repo, gone after the run.
    environ = Path(f"/proc/{children[0]}/environ").read_bytes().split(b"\0")
    key = Path(
        next(v for v in environ if v.startswith(b"AI_DEPLOY_SSH_PRIVATE_KEY="))
        .decode()
        .split("=", 1)[1]
    )
    assert key.is_file() and REPO_ROOT not in key.parents
    with flow.fake.lock:
        assert len(flow.fake.state.firewalls) == 1
        assert "ssh-keys" in flow.fake.state.instance.metadata
    process.terminate()
    code = process.finish(timeout=120)
    output = process.output
    assert code == 143, output
    assert "interrupted by SIGTERM" in output
    assert not [pid for pid in children if process_alive(pid)], "pyinfra outlived the deploy"
    assert not key.exists() and not key.parent.exists()
    assert len(flow.rules_deleted()) == 1
    flow.assert_nothing_left(output)


def test_running_create_operation_is_waited_for_and_removed(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    release = make_release("running")
    flow.fake.plan_operations("POST", r"/global/firewalls$", running_polls=3)
    code, output = flow.deploy(release, "--data", flow.env_data())
    assert code == 0, output
    # The insert came back RUNNING; the deploy polled its own operations client until DONE.
    assert len(flow.fake.requests_to("POST", r"/global/operations/[^/]+/wait$")) >= 3
    assert flow.release_served() == release.release_id
    assert len(flow.rules_created()) == 1 and len(flow.rules_deleted()) == 1
    flow.assert_nothing_left(output)


# --- sweep, permissions, runner address ----------------------------------------------------


def test_stale_rule_from_an_earlier_run_is_swept(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    now = datetime.now(timezone.utc)
    stale = f"{RULE_PREFIX}4000-1-dead"
    young = f"{RULE_PREFIX}4241-1-beef"
    foreign = "default-allow-ssh-office"
    # A killed run's leftover that still lets this runner in: SSH is open before the deploy.
    flow.fake.add_firewall(
        stale, created=now - timedelta(hours=3), source_ranges=[flow.runner_range]
    )
    flow.fake.add_firewall(young, created=now - timedelta(minutes=5))
    flow.fake.add_firewall(foreign, created=now - timedelta(days=30))
    assert ssh_port_state(flow.host.address) == "open"

    code, output = flow.deploy(make_release("flow"), "--data", flow.env_data())

    assert code == 0, output
    own = flow.rules_created()[0]["name"]
    assert sorted(flow.rules_deleted()) == sorted([stale, own])
    assert sorted(flow.fake.state.firewalls) == sorted([young, foreign])
    # What is left does not let the runner in: no SSH after the run.
    assert ssh_port_state(flow.host.address) == "refused"
    with flow.fake.lock:
        flow.fake.state.firewalls.clear()
    flow.mirror.sync()
    flow.assert_nothing_left(output)


def test_forbidden_create_names_the_missing_permission(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    release = make_release("flow")
    flow.fake.inject(
        "POST",
        r"/global/firewalls$",
        status=403,
        reason="forbidden",
        message="The caller does not have permission",
    )
    code, output = flow.deploy(release, "--data", flow.env_data())
    assert code == 12, output
    assert "compute.firewalls.create" in output
    assert flow.fake.requests_to("POST", r"/setMetadata$") == []
    assert "==> Deploy with pyinfra" not in output
    facts = _one_notification_each(flow, release.release_id, "failure")
    assert facts["discord"].get("failed phase") == "firewall"
    flow.assert_nothing_left(output)


# The window's faults through the CLI, each with the exit code the README's table gives.
WINDOW_REFUSALS = {
    "insert refused (403)": (
        lambda fake: fake.inject("POST", r"/global/firewalls$", status=403, reason="forbidden"),
        "compute.firewalls.create",
    ),
    "operation unreadable (403 on every get/wait)": (
        lambda fake: (
            fake.plan_operations("POST", r"/global/firewalls$", seconds=1.0),
            fake.inject("POST", r"/global/operations/", status=403, reason="forbidden", times=None),
            fake.inject("GET", r"/global/operations/", status=403, reason="forbidden", times=None),
        ),
        "compute.globalOperations.get",
    ),
    "create DONE with an error": (
        lambda fake: fake.plan_operations(
            "POST",
            r"/global/firewalls$",
            seconds=0.3,
            error={"code": "QUOTA_EXCEEDED", "message": "Quota 'FIREWALLS' exceeded"},
        ),
        "QUOTA_EXCEEDED",
    ),
}


@pytest.mark.parametrize("case", sorted(WINDOW_REFUSALS))
def test_window_refusals_through_the_cli_exit_12_and_leave_nothing(
    flow: Flow, make_release: Callable[[str], Release], case: str
) -> None:
    arrange, named = WINDOW_REFUSALS[case]
    arrange(flow.fake)
    code, output = flow.deploy(make_release("flow"), "--data", flow.env_data())
    assert code == 12, output
    assert named in output
    assert flow.fake.requests_to("POST", r"/setMetadata$") == []
    assert "==> Deploy with pyinfra" not in output
    flow.assert_nothing_left(output)


def test_retryable_answers_everywhere_still_deploy_and_close_through_the_cli(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    """Rate limits, 5xx and resourceNotReady on the insert, the waits, the key's metadata
    writes and the delete: retried with the same requestId; the deploy exits 0 and leaves
    nothing."""
    fake = flow.fake
    fake.plan_operations("POST", r"/global/firewalls$", seconds=1.0)
    fake.inject("POST", r"/global/firewalls$", status=403, reason="rateLimitExceeded")
    fake.inject("POST", r"/global/firewalls$", status=429, reason="rateLimitExceeded")
    fake.inject("POST", r"/global/operations/", status=503, reason="backendError")
    fake.inject("POST", r"/setMetadata$", status=403, reason="userRateLimitExceeded", times=2)
    fake.inject("DELETE", r"/global/firewalls/", status=400, reason="resourceNotReady", times=2)
    release = make_release("flow")

    code, output = flow.deploy(release, "--data", flow.env_data())

    assert code == 0, output
    assert flow.release_served() == release.release_id
    inserts = fake.requests_to("POST", r"/global/firewalls$")
    assert len(inserts) == 3 and len({r.query["requestId"][0] for r in inserts}) == 1
    deletes = fake.requests_to("DELETE", r"/global/firewalls/")
    assert len(deletes) == 3 and len({r.query["requestId"][0] for r in deletes}) == 1
    flow.assert_nothing_left(output)


def _laptop_environment(flow: Flow, key_file: Path) -> dict[str, str]:
    """A laptop: a service-account key as its credentials, no GitHub run, no CI output."""
    base = deploy_environment(
        os.environ, flow.fake, {**flow.myip.env(), "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}
    )
    return {k: v for k, v in base.items() if not k.startswith(("GITHUB_", "ACTIONS_"))}


def _service_account_key_file(fake: FakeGcp, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": fake.state.project,
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": fake.state.service_account,
        "client_id": "111111111111111111111",
        "token_uri": f"{fake.url}/oauth2/token",
    }
    path.write_text(json.dumps(info))
    return path


def test_rollback_status_and_logs_from_a_laptop_open_and_close_the_window(
    flow: Flow, make_release: Callable[[str], Release], tmp_path: Path
) -> None:
    """Day-2 commands outside CI reach the instance as the deploy does: the window for this
    machine's address, a key made for the command, pinned host keys; all gone afterwards."""
    first, second = make_release("flow"), make_release("next")
    for release in (first, second):
        code, output = flow.deploy(release, "--data", flow.env_data())
        assert code == 0, output
    assert flow.release_served() == second.release_id
    env = _laptop_environment(flow, _service_account_key_file(flow.fake, tmp_path / "sa.json"))
    windows = len(flow.rules_created())

    rollback = DeployProcess([], env, command=("rollback",))
    code = rollback.finish(timeout=300)
    print(rollback.output)

    assert code == 0, rollback.output
    assert flow.release_served() == first.release_id
    assert len(flow.rules_created()) == windows + 1  # one window, for this command
    (rule,) = flow.rules_created()[windows:]
    assert "-local-" in rule["name"] or rule["name"].startswith(f"{RULE_PREFIX}local")
    assert rule["sourceRanges"] == [flow.runner_range]
    flow.assert_nothing_left(rollback.output)

    status = DeployProcess([], env, command=("status",))
    code = status.finish(timeout=300)
    print(status.output)
    assert code == 0, status.output
    assert f"current:   {first.release_id}" in status.output
    assert f"(previous: {second.release_id})" in status.output
    flow.assert_nothing_left(status.output)

    logs = DeployProcess(["--error", "--lines", "5"], env, command=("logs",))
    code = logs.finish(timeout=300)
    print(logs.output)
    assert code == 0, logs.output
    # the host is named by its instance, as in a fleet
    shown = [line for line in logs.lines if line.startswith(f"{flow.fake.state.instance.name} | ")]
    assert 0 < len(shown) <= 5, logs.output
    assert len(flow.rules_created()) == windows + 3  # one window per command
    flow.assert_nothing_left(logs.output)


class AccessWitness:
    """A loopback health URL that, on each request, reads from the fake whether a firewall rule
    and the instance's ssh-keys entry exist at that moment, then answers 200."""

    def __init__(self, fake: FakeGcp) -> None:
        self.seen: list[tuple[bool, bool]] = []
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                with fake.lock:
                    window = bool(fake.state.firewalls)
                    key = "ssh-keys" in fake.state.instance.metadata
                witness.seen.append((window, key))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"


def test_a_gcp_instance_rollback_opens_its_window_and_key_and_closes_them(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    """`ai-deploy rollback` on GCP_INSTANCE in CI is the deploy's engine: its window and its key
    are there while the outside check asks (a health URL that reads the fake's state), all gone
    when it ends, and it reports as a rollback (closing line and notifications)."""
    first, second = make_release("flow"), make_release("next")
    for release in (first, second):
        code, output = flow.deploy(release, "--data", flow.env_data())
        assert code == 0, output
    windows = len(flow.rules_created())
    told = len(flow.hooks.received("slack"))
    witness = AccessWitness(flow.fake)
    try:
        extra = {**flow.myip.env(), **flow.hooks.env(), "AI_DEPLOY_HEALTH_URL": witness.url}
        env = deploy_environment(os.environ, flow.fake, extra)
        rollback = DeployProcess([], env, command=("rollback",))
        flow.processes.append(rollback)
        code = rollback.finish(timeout=300)
    finally:
        witness.server.shutdown()
        witness.server.server_close()
    print(rollback.output)

    assert code == 0, rollback.output
    assert flow.release_served() == first.release_id
    assert witness.seen, f"the outside check never asked:\n{rollback.output}"
    assert all(window and key for window, key in witness.seen), (witness.seen, rollback.output)
    assert len(flow.rules_created()) == windows + 1  # one window, for the rollback
    assert rollback.lines[-1].startswith(
        f"\u2705 ai-server rollback succeeded: release {first.release_id}"
    ), rollback.output
    slack = flow.hooks.received("slack")
    assert len(slack) == told + 1, slack
    assert slack_facts(slack[-1]).get("release") == first.release_id, slack[-1]
    flow.assert_nothing_left(rollback.output)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_followed_log_through_the_window_leaves_nothing(
    flow: Flow, make_release: Callable[[str], Release], tmp_path: Path, signum: int
) -> None:
    """`logs -f` from a laptop runs until stopped: SIGTERM (a CI cancel) or SIGINT (Ctrl-C)
    ends the command, then the window and the key go."""
    code, output = flow.deploy(make_release("flow"), "--data", flow.env_data())
    assert code == 0, output
    env = _laptop_environment(flow, _service_account_key_file(flow.fake, tmp_path / "sa.json"))
    follow = DeployProcess(["-f", "--error", "--lines", "1"], env, command=("logs",))
    follow.wait_for(rf"^{re.escape(flow.fake.state.instance.name)} \| ", timeout=180)
    with flow.fake.lock:
        assert flow.fake.state.firewalls, "the window is open while the log is followed"
    follow.proc.send_signal(signum)
    code = follow.finish(timeout=120)
    print(follow.output)
    assert code == 128 + signum, follow.output
    assert "Traceback" not in follow.output
    flow.assert_nothing_left(follow.output)


def test_invalid_runner_address_stops_before_anything_is_created(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    flow.myip.answer = (
        "<!DOCTYPE html>\n<html><body><p>Your IP address is "
        f"{flow.myip.address}</p></body></html>\n"
    )
    flow.myip.content_type = "text/html"
    code, output = flow.deploy(make_release("flow"), "--data", flow.env_data())
    assert code == 11, output
    assert flow.myip.hits >= 1
    assert "is not a single IPv4 address" in output
    assert mutating_compute_requests(flow.fake) == []
    assert flow.fake.requests_to("POST", r"/global/firewalls$") == []
    flow.assert_nothing_left(output)


# --- notifications -------------------------------------------------------------------------


def test_failing_webhooks_change_neither_exit_code_nor_outcome(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    release = make_release("flow")
    flow.hooks.modes = {"slack": "error", "discord": "hang"}
    code, output = flow.deploy(release, "--data", flow.env_data())
    assert code == 0, output
    assert "notification to slack: failed" in output
    assert "notification to discord: failed" in output
    assert "deploy succeeded: release " + release.release_id in output
    # Both got the payload (Slack twice: one retry after the 500), saying "success".
    slack, discord = flow.hooks.received("slack"), flow.hooks.received("discord")
    assert len(slack) == 2 and len(discord) >= 1
    for payload in slack:
        assert slack_facts(payload)["outcome"] == "success"
    assert discord_facts(discord[0])["outcome"] == "success"
    assert discord_facts(discord[0])["release"] == release.release_id
    assert flow.release_served() == release.release_id
    flow.assert_nothing_left(output)


def test_failing_webhooks_do_not_hide_a_failure(
    flow: Flow, make_release: Callable[[str], Release]
) -> None:
    flow.hooks.modes = {"slack": "hang", "discord": "error"}
    flow.fake.inject("POST", r"/global/firewalls$", status=403, reason="forbidden")
    started = time.monotonic()
    code, output = flow.deploy(make_release("flow"), "--data", flow.env_data())
    elapsed = time.monotonic() - started
    assert code == 12, output
    assert "compute.firewalls.create" in output
    assert "notification to slack: failed" in output
    # The hanging receiver holds on for 30 s; the deploy gave up on it well before.
    assert elapsed < flow.hooks.hang_s - 5, elapsed
    assert slack_facts(flow.hooks.received("slack")[0])["outcome"] == "failure"
    assert discord_facts(flow.hooks.received("discord")[0])["outcome"] == "failure"
    flow.assert_nothing_left(output)


# --- dry run -------------------------------------------------------------------------------


def test_dry_run_changes_nothing(flow: Flow, make_release: Callable[[str], Release]) -> None:
    """The preview of one instance is the rollout's, as for a fleet: the host's state read
    through the run's window and key (both gone afterwards), the plan and pyinfra's dry diff
    printed, no lock, no change on the host, nobody told."""
    current = guest_output(flow.host, "readlink /app/ai-server/current || true").strip()
    release = make_release("dry")
    code, output = flow.deploy(release, "--dry-run", "--data", flow.env_data())
    assert code == 0, output
    name = flow.fake.state.instance.name
    assert re.search(rf"batch 1\s+{re.escape(name)}\s+\S+ -> {release.release_id}", output), output
    assert "pyinfra's plan per host (nothing is changed)" in output
    assert flow.hooks.deliveries == []
    assert guest_output(flow.host, "readlink /app/ai-server/current || true").strip() == current
    assert guest_output(flow.host, "test -e /app/ai-server/.deploy.lock && echo L || true") == ""
    flow.assert_nothing_left(output)


# --- secrets -------------------------------------------------------------------------------


def test_an_app_secret_in_its_error_log_is_masked_and_sent_nowhere(
    flow: Flow, secret_crash_release: Release, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.md"
    code, output = flow.deploy(
        secret_crash_release,
        "--data",
        flow.env_data(),
        env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert code in (14, 15, 16), output
    # The host's error-log tail reached the CI log, redacted; the key itself only ever in
    # ::add-mask:: commands (which GitHub hides).
    assert "OPENAI_API_KEY=***" in output, output
    shown = [line for line in output.splitlines() if APP_SECRET in line]
    assert all(line.startswith("::add-mask::") for line in shown), shown
    sent = json.dumps([d.payload for d in flow.hooks.deliveries]) + summary.read_text()
    assert APP_SECRET not in sent and "Traceback" not in sent and "RuntimeError" not in sent
    _one_notification_each(
        flow, secret_crash_release.release_id, "rollback" if code == 15 else "failure"
    )
    flow.assert_nothing_left(output)
