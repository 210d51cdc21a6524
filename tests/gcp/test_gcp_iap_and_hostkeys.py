"""SSH through Identity-Aware Proxy (no firewall window) and host keys pinned from the instance's
guest attributes, with the real google-cloud-compute client against the loopback fake.

The fast tests read guest attributes and firewall rules through the fake. The sandbox tests run
`ai-deploy deploy` as CI does, with AI_DEPLOY_SSH_TRANSPORT=iap: a stand-in `gcloud` first on
PATH records its arguments and, for `compute start-iap-tunnel INSTANCE 22
--local-host-port=localhost:0`, listens on a loopback port it reports as gcloud does and carries
each connection to the test's own sandbox host's port 22 (the only address it reaches), the way
IAP's tunnel carries it to the VM. The fake publishes the sandbox host's real host keys
as the guest agent would; changing them on the host between two runs must stop the second run
before anything is uploaded.

What this does not prove (only a real project does): that Google's IAP accepts the caller's
role, that gcloud's real tunnel behaves as the stand-in does, and that the guest agent publishes
the keys (enable-guest-attributes=TRUE) on the image used.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.artifact.build import build_artifact
from ai_deploy.artifact.check import check_artifact
from ai_deploy.ci.connect.ssh import SshAccess, host_key_mismatch, prepare_access, ssh_options
from ai_deploy.ci.connect.tunnel import TUNNELS_DIR_ENV, iap_tunnel
from ai_deploy.ci.options import DeployOptions, PhaseFailed
from ai_deploy.gcp.hostkeys import HostKey, parse_host_key, published_host_keys
from ai_deploy.gcp.iap import (
    IAP_ROLE,
    IAP_SOURCE_RANGE,
    IapError,
    create_rule_command,
    find_standing_rule,
    require_standing_rule,
    tunnel_argv,
)
from ai_deploy.gcp.permissions import IAP_PERMISSIONS
from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp
from tests.gcp.flowkit import (
    REPO_ROOT,
    DeployProcess,
    FirewallMirror,
    GuestAgent,
    MyIpServer,
    deploy_environment,
    guest_output,
    mutating_compute_requests,
    process_alive,
    wait_until,
)
from tests.gcp.flowkit_servers import write_stand_in_gcloud
from tests.gcp.permission_table import compute_permissions

pytestmark = [pytest.mark.gcp]

ED25519_BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIEJR8+a/N/5rfH0kYxSH3iMdMMhgQJN7/gEx4xJMIQUb"
ENV_FILE_TEXT = "MODEL_LOAD_SECONDS=1\n"
# What an upload would change on the host: the releases and the staging directory.
LIST_UPLOADS = "ls -lA /app/ai-server/releases /app/ai-server/.staging 2>&1 || true"


# --- guest attributes: the host keys, read as gcloud reads them ----------------------------


def test_published_host_keys_are_read_from_the_hostkeys_namespace(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    inst = gcp_fake.state.instance
    project = gcp_fake.state.project

    def read() -> tuple[HostKey, ...] | None:
        return published_host_keys(token_credentials, project, inst.zone, inst.name)

    # Guest attributes off: 404, reported as "not published", not as an error.
    assert read() is None
    # On, but the agent has written nothing yet.
    gcp_fake.publish_host_keys({})
    assert read() is None
    # Published; an entry whose blob is not of its own algorithm is left out.
    gcp_fake.publish_host_keys(
        {"ssh-ed25519": ED25519_BLOB, "ecdsa-sha2-nistp256": ED25519_BLOB, "ssh-rsa": "%%%"}
    )
    (key,) = read() or ()
    assert key == HostKey("ssh-ed25519", ED25519_BLOB)
    assert key.fingerprint.startswith("SHA256:") and not key.fingerprint.endswith("=")
    (request, *_) = gcp_fake.requests_to("GET", r"/getGuestAttributes$")
    assert request.query["queryPath"] == ["hostkeys/"]
    assert request.path == (
        f"/compute/v1/projects/{project}/zones/{inst.zone}/instances/{inst.name}/getGuestAttributes"
    )


def test_host_key_values_in_either_form_are_parsed() -> None:
    assert parse_host_key("ssh-ed25519", ED25519_BLOB) == HostKey("ssh-ed25519", ED25519_BLOB)
    assert parse_host_key("ssh-ed25519", f"ssh-ed25519 {ED25519_BLOB} root@vm") == HostKey(
        "ssh-ed25519", ED25519_BLOB
    )
    assert parse_host_key("ssh-rsa", ED25519_BLOB) is None
    assert parse_host_key("ssh-ed25519", "") is None
    assert parse_host_key("", ED25519_BLOB) is None


def test_pinned_keys_make_ssh_strict_and_iap_uses_the_tunnels_local_port(
    tmp_path: Path,
) -> None:
    key = HostKey("ssh-ed25519", ED25519_BLOB)
    argv = tunnel_argv("ai-server-prod", "asia-northeast3-a", "dojangkok-ai")
    assert argv == [
        "compute",
        "start-iap-tunnel",
        "ai-server-prod",
        "22",
        "--local-host-port=localhost:0",
        "--zone",
        "asia-northeast3-a",
        "--project",
        "dojangkok-ai",
    ]
    access = prepare_access(tmp_path, "127.0.0.1", port=40022, pinned=[key], through_iap=True)
    assert access.strict == "yes"
    # ssh and paramiko look a port other than 22 up as [HOST]:PORT.
    assert access.known_hosts.read_text() == f"[127.0.0.1]:40022 ssh-ed25519 {ED25519_BLOB}\n"
    options = ssh_options(tmp_path / "id", access.known_hosts, access)
    assert options[:2] == ["-p", "40022"]
    assert "StrictHostKeyChecking=yes" in options
    (tmp_path / "direct").mkdir()
    loose = prepare_access(tmp_path / "direct", "10.0.0.9")
    assert loose.known_hosts.read_text() == ""
    assert loose.strict == "accept-new" and "-p" not in ssh_options(
        tmp_path / "id", loose.known_hosts, loose
    )
    with pytest.raises(IapError):
        tunnel_argv("vm;rm -rf /", "zone", "project")


def test_unknown_transport_or_host_key_setting_is_a_config_error(tmp_path: Path) -> None:
    opts = DeployOptions.from_env(
        tmp_path / "a.tar.gz", {"AI_DEPLOY_SSH_TRANSPORT": "iap", "AI_DEPLOY_HOST_KEYS": "require"}
    )
    assert (opts.ssh_transport, opts.host_keys) == ("iap", "require")
    opts.check_access_settings()
    defaults = DeployOptions.from_env(tmp_path / "a.tar.gz", {})
    assert (defaults.ssh_transport, defaults.host_keys) == ("direct", "accept-new")
    for env, name in (
        ({"AI_DEPLOY_SSH_TRANSPORT": "IAP "}, "AI_DEPLOY_SSH_TRANSPORT"),
        ({"AI_DEPLOY_HOST_KEYS": "no"}, "AI_DEPLOY_HOST_KEYS"),
    ):
        with pytest.raises(PhaseFailed) as caught:
            DeployOptions.from_env(tmp_path / "a.tar.gz", env).check_access_settings()
        assert caught.value.phase == "config" and name in str(caught.value)


# --- the standing rule IAP needs -----------------------------------------------------------


def test_standing_rule_check_names_the_fix_when_missing(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    project = gcp_fake.state.project

    def check() -> str | None:
        rule = find_standing_rule(
            token_credentials, project, network="default", target_tag="ai-server"
        )
        return rule.name if rule else None

    assert check() is None
    with pytest.raises(IapError) as caught:
        require_standing_rule(token_credentials, project, network="default", target_tag="ai-server")
    message = str(caught.value)
    assert create_rule_command(project, "default", "ai-server") in message
    assert (
        "gcloud compute firewall-rules create allow-ssh-from-iap --project dojangkok-ai "
        "--network default --direction INGRESS --action allow --rules tcp:22 "
        "--source-ranges 35.235.240.0/20 --target-tags ai-server"
    ) in message
    assert IAP_ROLE in message

    # Rules that do not let IAP reach tcp:22 of the tag do not count.
    gcp_fake.add_firewall("iap-other-tag", source_ranges=[IAP_SOURCE_RANGE])
    gcp_fake.add_firewall("runner-only", source_ranges=["198.51.100.7/32"])
    with gcp_fake.lock:
        fw = gcp_fake.state.firewalls
        fw["iap-other-tag"]["targetTags"] = ["db-server"]
        fw["runner-only"]["targetTags"] = ["ai-server"]
        fw["iap-http"] = {
            **fw["runner-only"],
            "name": "iap-http",
            "sourceRanges": [IAP_SOURCE_RANGE],
            "allowed": [{"IPProtocol": "tcp", "ports": ["80", "8000-8100"]}],
        }
        fw["iap-disabled"] = {
            **fw["runner-only"],
            "name": "iap-disabled",
            "sourceRanges": [IAP_SOURCE_RANGE],
            "disabled": True,
        }
        fw["iap-half"] = {
            **fw["runner-only"],
            "name": "iap-half",
            "sourceRanges": ["35.235.240.0/21"],
        }
    assert check() is None

    with gcp_fake.lock:
        fw["allow-ssh-from-iap"] = {
            **fw["runner-only"],
            "name": "allow-ssh-from-iap",
            "sourceRanges": [IAP_SOURCE_RANGE],
            "allowed": [{"IPProtocol": "tcp", "ports": ["20-23"]}],
        }
    assert check() == "allow-ssh-from-iap"
    assert mutating_compute_requests(gcp_fake) == []


# --- IAP and pinned keys end to end on a sandbox host --------------------------------------


@pytest.fixture(scope="module")
def vm_host() -> Iterator[Host]:
    if os.geteuid() != 0:
        pytest.fail("these tests boot a systemd-nspawn sandbox host and need root")
    name = f"gcpiap-{secrets.token_hex(3)}"
    started, _ = hosts.up(count=1, name=name)
    try:
        yield started[0]
    finally:
        hosts.down([name])


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("iap")
    (path / "ai-server.env").write_text(ENV_FILE_TEXT)
    return path


@pytest.fixture(scope="module")
def release(build_dir: Path) -> Path:
    return build_artifact(
        REPO_ROOT / "examples" / "ai-server", build_dir, artifact_id=f"iap-{secrets.token_hex(4)}"
    )


@dataclass
class IapFlow:
    fake: FakeGcp
    host: Host
    agent: GuestAgent
    bin_dir: Path
    gcloud_log: Path
    env_file: Path
    processes: list[DeployProcess] = field(default_factory=list)

    def deploy(
        self,
        artifact: Path,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 300.0,
    ) -> tuple[int, str]:
        argv = ["--artifact", str(artifact), "--health-interval", "1", *args]
        process = self.start(argv, env)
        try:
            code = process.finish(timeout=timeout)
        finally:
            print(f"$ ai-deploy deploy {' '.join(argv)}\n{process.output}")
        print(f"(exit {code})")
        return code, process.output

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> DeployProcess:
        """`ai-deploy deploy ARGV` through IAP, left running."""
        extra = {
            "AI_DEPLOY_SSH_TRANSPORT": "iap",
            # No "what is my IP" service exists here: IAP mode must not ask one.
            "AI_DEPLOY_MYIP_URLS": "http://127.0.0.1:9/never-asked",
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **(env or {}),
        }
        process = DeployProcess(argv, deploy_environment(os.environ, self.fake, extra))
        self.processes.append(process)
        return process

    def tunnels(self) -> list[list[str]]:
        if not self.gcloud_log.exists():
            return []
        return [json.loads(line) for line in self.gcloud_log.read_text().splitlines()]

    def tunnel_connections(self) -> int:
        log = self.gcloud_log.parent / "tunnel-connections.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def add_standing_rule(self) -> None:
        self.fake.add_firewall("allow-ssh-from-iap", source_ranges=[IAP_SOURCE_RANGE])
        with self.fake.lock:
            self.fake.state.firewalls["allow-ssh-from-iap"]["targetTags"] = ["ai-server"]

    def real_host_keys(self) -> dict[str, str]:
        """The sandbox host's host keys as its sshd has them (algorithm -> blob)."""
        keys: dict[str, str] = {}
        for line in guest_output(self.host, "cat /etc/ssh/ssh_host_*_key.pub").splitlines():
            algorithm, blob = line.split()[:2]
            keys[algorithm] = blob
        return keys

    def firewall_calls(self) -> list[str]:
        return [
            f"{r.method} {r.path}"
            for r in self.fake.requests
            if "/global/firewalls" in r.path and r.method != "GET"
        ]


@pytest.fixture
def iap(
    gcp_fake: FakeGcp,
    github_workload_identity: Callable[..., Path],
    vm_host: Host,
    build_dir: Path,
    tmp_path: Path,
) -> Iterator[IapFlow]:
    github_workload_identity()
    inst = gcp_fake.state.instance
    with gcp_fake.lock:
        inst.nat_ip = vm_host.address  # the outside health check's address only
        inst.tags = ["ai-server"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud-calls.jsonl"
    write_stand_in_gcloud(
        bin_dir,
        log,
        tmp_path / "tunnel-connections.log",
        gcp_fake.state.project,
        {inst.name: (inst.zone, vm_host.address)},
    )
    agent = GuestAgent(gcp_fake, vm_host)
    flow = IapFlow(gcp_fake, vm_host, agent, bin_dir, log, build_dir / "ai-server.env")
    try:
        agent.start()
        yield flow
    finally:
        for process in flow.processes:
            process.kill()
        agent.stop()


def test_iap_deploy_is_healthy_without_any_firewall_change(iap: IapFlow, release: Path) -> None:
    iap.add_standing_rule()
    keys = iap.real_host_keys()
    iap.fake.publish_host_keys(keys)
    # The key's metadata writes take time, as real zone operations do.
    iap.fake.plan_operations("POST", r"/setMetadata$", running_polls=1, times=None)

    code, output = iap.deploy(release, "--data", f"env_file={iap.env_file}")

    assert code == 0, output
    release_id = check_artifact(release).release_id
    reply = requests.get(f"http://{iap.host.address}:8000/health", timeout=5)
    assert reply.status_code == 200 and reply.json()["release"] == release_id
    inst = iap.fake.state.instance
    tunnel = [
        "compute",
        "start-iap-tunnel",
        inst.name,
        "22",
        "--local-host-port=localhost:0",
        "--zone",
        inst.zone,
        "--project",
        iap.fake.state.project,
    ]
    # One tunnel for the run; the wait for SSH and pyinfra's connection both went through it,
    # and it is gone afterwards.
    assert iap.tunnels() == [tunnel], iap.tunnels()
    assert iap.tunnel_connections() >= 2
    assert "IAP tunnel to" in output and "listens on 127.0.0.1:" in output
    assert iap.firewall_calls() == []
    assert "firewall rule allow-ssh-from-iap lets IAP" in output
    assert "runner address" not in output
    assert f"pinned {len(keys)} host key(s) of {inst.name}" in output
    # Only the ephemeral key's metadata changed, and it is gone again.
    assert all("/setMetadata" in call for call in mutating_compute_requests(iap.fake))
    assert "ssh-keys" not in iap.fake.state.instance.metadata
    # The README's IAP role is exactly what this run used (the tunnel's IAP permission aside,
    # which gcloud uses, not a Compute call).
    assert compute_permissions(iap.fake.requests) == set(IAP_PERMISSIONS) - {
        "iap.tunnelInstances.accessViaIAP"
    }


def test_a_tunnel_left_by_a_killed_run_is_ended_by_the_next_run(
    iap: IapFlow, release: Path, tmp_path: Path
) -> None:
    """SIGKILL gives ai-deploy no chance to end its tunnel (gcloud runs in its own session): the
    next run finds the record, sees its run gone, and ends that tunnel before opening its own."""
    iap.add_standing_rule()
    iap.fake.publish_host_keys(iap.real_host_keys())
    records = tmp_path / "tunnels"
    env = {TUNNELS_DIR_ENV: str(records)}
    killed = iap.start(["--artifact", str(release), "--data", f"env_file={iap.env_file}"], env)
    killed.wait_for(r"IAP tunnel to \S+ listens on 127\.0\.0\.1:\d+")
    (record,) = [json.loads(p.read_text()) for p in records.glob("*.json")]
    killed.kill()
    assert process_alive(record["pid"]), "the tunnel ended with its run: nothing to find"

    code, output = iap.deploy(release, "--data", f"env_file={iap.env_file}", env=env)

    assert code == 0, output
    assert f"ended the IAP tunnel to {iap.fake.state.instance.name} (pid {record['pid']})" in output
    assert wait_until(lambda: not process_alive(record["pid"]), timeout=10)
    assert list(records.glob("*.json")) == []  # this run's own tunnel ended and was unrecorded


def test_iap_without_the_standing_rule_prints_the_fix(iap: IapFlow, release: Path) -> None:
    iap.fake.publish_host_keys(iap.real_host_keys())

    code, output = iap.deploy(release, "--data", f"env_file={iap.env_file}")

    assert code == 12, output
    project = iap.fake.state.project
    assert create_rule_command(project, "default", "ai-server") in output
    assert IAP_ROLE in output
    assert iap.tunnels() == []
    assert iap.firewall_calls() == []
    assert mutating_compute_requests(iap.fake) == []


def test_guest_attributes_off_with_require_stops_naming_the_setting(
    iap: IapFlow, release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iap.add_standing_rule()
    monkeypatch.setenv("AI_DEPLOY_HOST_KEYS", "require")

    code, output = iap.deploy(release, "--data", f"env_file={iap.env_file}")

    assert code == 13, output
    assert f"{iap.fake.state.instance.name} publish no host keys" in output
    # Said without NAME=value: the CI log masks values of key-like settings.
    assert 'AI_DEPLOY_HOST_KEYS is "require"' in output
    assert iap.tunnels() == [] and mutating_compute_requests(iap.fake) == []


def test_changed_host_key_stops_the_next_run_before_anything_is_uploaded(
    iap: IapFlow, release: Path, build_dir: Path
) -> None:
    iap.add_standing_rule()
    old = iap.real_host_keys()
    iap.fake.publish_host_keys(old)
    code, output = iap.deploy(release, "--data", f"env_file={iap.env_file}")
    assert code == 0, output
    served = requests.get(f"http://{iap.host.address}:8000/health", timeout=5).json()["release"]

    # Between the runs the host's keys change (a re-created disk, or something else answering
    # on its port 22); the published keys are still the old ones.
    guest_output(
        iap.host,
        "rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub && ssh-keygen -A "
        "&& systemctl restart ssh",
    )
    new = iap.real_host_keys()
    assert new["ssh-ed25519"] != old["ssh-ed25519"]
    before = guest_output(iap.host, LIST_UPLOADS)
    other = build_artifact(
        REPO_ROOT / "examples" / "ai-server", build_dir, artifact_id=f"next-{secrets.token_hex(4)}"
    )

    code, output = iap.deploy(other, "--data", f"env_file={iap.env_file}")

    assert code == 13, output
    presented = HostKey("ssh-ed25519", new["ssh-ed25519"])
    pinned = HostKey("ssh-ed25519", old["ssh-ed25519"])
    assert f"presented ssh-ed25519 {presented.fingerprint}" in output
    assert f"ssh-ed25519 {pinned.fingerprint}" in output
    assert "Deploy with pyinfra" not in output
    after = guest_output(iap.host, LIST_UPLOADS)
    assert after == before
    reply = requests.get(f"http://{iap.host.address}:8000/health", timeout=5).json()
    assert reply["release"] == served
    assert "ssh-keys" not in iap.fake.state.instance.metadata


def test_mismatch_message_reads_the_presented_key_through_the_tunnel(
    iap: IapFlow, tmp_path: Path
) -> None:
    """The probe behind the message: key exchange only, through the same tunnel."""
    inst = iap.fake.state.instance
    environ = {**os.environ, "PATH": f"{iap.bin_dir}:{os.environ.get('PATH', '')}"}
    real = iap.real_host_keys()
    wrong = HostKey("ssh-ed25519", ED25519_BLOB)
    with iap_tunnel(
        inst.name, inst.zone, iap.fake.state.project, wait_s=30, environ=environ
    ) as tunnel:
        access = SshAccess(tmp_path / "known_hosts", tunnel.host, tunnel.port, (wrong,), True)
        message = host_key_mismatch(inst.name, access)
    expected = HostKey("ssh-ed25519", real["ssh-ed25519"]).fingerprint
    assert f"presented ssh-ed25519 {expected}" in message
    assert f"pinned ssh-ed25519 {wrong.fingerprint}" in message


def _change_host_keys(host: Host) -> None:
    guest_output(
        host,
        "rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub && ssh-keygen -A "
        "&& systemctl restart ssh",
    )


def test_changed_host_key_stops_a_direct_deploy_before_anything_is_uploaded(
    iap: IapFlow, release: Path, build_dir: Path
) -> None:
    """The same guarantee through the firewall window (no IAP): keys pinned for ssh and pyinfra
    from guest attributes; a key changed between two runs stops the second in the SSH phase."""
    mirror = FirewallMirror(iap.fake, iap.host)
    myip = MyIpServer(iap.host.index)
    direct = {"AI_DEPLOY_SSH_TRANSPORT": "direct", **myip.env()}
    try:
        mirror.install()
        old = iap.real_host_keys()
        iap.fake.publish_host_keys(old)
        code, output = iap.deploy(release, "--data", f"env_file={iap.env_file}", env=direct)
        assert code == 0, output
        assert f"pinned {len(old)} host key(s) of {iap.fake.state.instance.name}" in output
        served = requests.get(f"http://{iap.host.address}:8000/health", timeout=5).json()
        _change_host_keys(iap.host)
        new = iap.real_host_keys()
        assert new["ssh-ed25519"] != old["ssh-ed25519"]
        before = guest_output(iap.host, LIST_UPLOADS)
        other = build_artifact(
            REPO_ROOT / "examples" / "ai-server",
            build_dir,
            artifact_id=f"direct-{secrets.token_hex(4)}",
        )

        code, output = iap.deploy(other, "--data", f"env_file={iap.env_file}", env=direct)

        assert code == 13, output
        presented = HostKey("ssh-ed25519", new["ssh-ed25519"]).fingerprint
        pinned = HostKey("ssh-ed25519", old["ssh-ed25519"]).fingerprint
        assert f"presented ssh-ed25519 {presented}" in output
        assert "pinned ecdsa-sha2-nistp256" in output and pinned in output
        assert "==> Deploy with pyinfra" not in output
        assert guest_output(iap.host, LIST_UPLOADS) == before
        now = requests.get(f"http://{iap.host.address}:8000/health", timeout=5).json()
        assert now["release"] == served["release"]
        with iap.fake.lock:
            assert iap.fake.state.firewalls == {} or set(iap.fake.state.firewalls) == set()
            assert "ssh-keys" not in iap.fake.state.instance.metadata
        assert iap.tunnels() == []
    finally:
        mirror.close()
        myip.stop()
