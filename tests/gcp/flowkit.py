"""Test-side stand-ins for what surrounds `ai-deploy deploy` on a real GCP run.

With the loopback Compute fake (tests/fakes/gcp/) and a sandbox host playing the VM:

- `MyIpServer`: the "what is my IP" service, listening on the sandbox link's machine-side
  address, which is exactly the source address the guest sees for this machine's connections;
- `GuestAgent`: the GCE guest agent: mirrors the instance metadata `ssh-keys` onto the host
  (creates the user with sudo rights, writes ~USER/.ssh/authorized_keys, removes keys whose
  entry went away or whose expireOn passed), through `nsenter` into the container, never SSH;
- `FirewallMirror`: the VPC firewall: an nftables table of its own on this machine's output
  path to the guest lets tcp:22 through only from the source ranges of fake rules that allow
  tcp:22 to a tag the instance carries; everything else to :22 is answered with a TCP reset;
- `WebhookReceiver`: Slack and Discord incoming webhooks that record payloads and can answer
  500 or hang (bounded);
- `DeployProcess`: `python -m ai_deploy.cli deploy ...` as a child process with its output
  collected line by line.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ai_deploy.sandbox import network
from ai_deploy.sandbox.hosts import Host
from tests.fakes.gcp import FakeGcp
from tests.fakes.tls import TestCertificates

REPO_ROOT = Path(__file__).resolve().parents[2]
SSH_PORT = 22


# --- reaching the guest --------------------------------------------------------------------


def ssh_port_state(address: str, timeout: float = 3.0) -> str:
    """Say "open" when sshd on ADDRESS:22 answers with its banner, "refused" on a reset, else
    "timeout" or the error's name."""
    try:
        with socket.create_connection((address, SSH_PORT), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(64)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    return "open" if banner.startswith(b"SSH-") else f"odd banner {banner!r}"


def container_pid(host: Host) -> int:
    """PID (in this machine's namespace) of the host's container init: the child of its
    systemd-nspawn (whose pid file the supervisor writes) running from the host's tree."""
    pid = int((host.directory / "nspawn.pid").read_text().strip())
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if not args or not args[0].endswith(b"systemd-nspawn") or str(host.merged).encode() not in args:
        raise RuntimeError(f"pid {pid} is not the systemd-nspawn of {host.name}")
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    if len(children) != 1:
        raise RuntimeError(f"systemd-nspawn {pid} of {host.name} has children {children}")
    return children[0]


def in_guest(host: Host, script: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run SCRIPT with sh as root inside the host's namespaces (no SSH involved)."""
    return subprocess.run(
        [
            "nsenter",
            "-t",
            str(container_pid(host)),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def guest_output(host: Host, script: str) -> str:
    proc = in_guest(host, script)
    if proc.returncode != 0:
        raise RuntimeError(f"in {host.name}: {script!r} failed: {proc.stderr.strip()}")
    return proc.stdout


# --- small HTTP servers --------------------------------------------------------------------


class _Server:
    """A ThreadingHTTPServer on ADDRESS (port chosen by the kernel) in a daemon thread."""

    def __init__(self, address: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer((address, 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class MyIpServer:
    """A "what is my IP" service answering `answer` (default: the link's machine-side address,
    the source address of this machine's packets to the guest) to every GET, over https with a
    test CA. `env()` is what the deploy needs to ask it: the URL, the CA, and the two settings
    that accept one service and this private sandbox address (both said in the deploy's output)."""

    def __init__(self, index: int) -> None:
        self.address = network.gateway_address(index)
        self._tls_dir = Path(tempfile.mkdtemp(prefix="ai-deploy-myip-tls-"))
        self.tls = TestCertificates(self._tls_dir, [self.address])
        self.answer = f"{self.address}\n"
        self.content_type = "text/plain"
        self.hits = 0
        kit = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                kit.hits += 1
                body = kit.answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", kit.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Server(self.address, Handler)
        self._server.httpd.socket = self.tls.server_context().wrap_socket(
            self._server.httpd.socket, server_side=True
        )

    @property
    def url(self) -> str:
        return f"{self._server.base_url.replace('http://', 'https://', 1)}/ip"

    def env(self) -> dict[str, str]:
        return {
            "AI_DEPLOY_MYIP_URLS": self.url,
            "AI_DEPLOY_MYIP_SINGLE_SERVICE": "true",
            "AI_DEPLOY_MYIP_ALLOW_NETWORKS": f"{self.address}/32",
            "REQUESTS_CA_BUNDLE": str(self.tls.ca_path),
        }

    def stop(self) -> None:
        self._server.stop()
        shutil.rmtree(self._tls_dir, ignore_errors=True)


@dataclass
class Delivery:
    kind: str  # "slack" or "discord"
    path: str
    payload: Any


class WebhookReceiver:
    """Slack and Discord incoming webhooks on loopback. `modes[kind]` is "ok" (200), "error"
    (500) or "hang" (holds the request up to `hang_s` seconds, or until stop())."""

    def __init__(self, hang_s: float = 30.0) -> None:
        self.deliveries: list[Delivery] = []
        self.modes = {"slack": "ok", "discord": "ok"}
        self.hang_s = hang_s
        self._released = threading.Event()
        self._lock = threading.Lock()
        kit = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                kind = self.path.strip("/").split("/", 1)[0]
                try:
                    payload: Any = json.loads(raw)
                except ValueError:
                    payload = raw.decode(errors="replace")
                with kit._lock:
                    kit.deliveries.append(Delivery(kind, self.path, payload))
                mode = kit.modes.get(kind, "ok")
                if mode == "hang":
                    kit._released.wait(kit.hang_s)
                status = 500 if mode == "error" else 204 if kind == "discord" else 200
                body = b"" if status == 204 else b"ok" if status == 200 else b"internal_error"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (hang mode)

        self._server = _Server("127.0.0.1", Handler)

    @property
    def slack_url(self) -> str:
        return f"{self._server.base_url}/slack/services/T0000/B0000/secret-slack-token"

    @property
    def discord_url(self) -> str:
        return f"{self._server.base_url}/discord/api/webhooks/1234/secret-discord-token"

    def env(self) -> dict[str, str]:
        return {
            "AI_DEPLOY_SLACK_WEBHOOK_URL": self.slack_url,
            "AI_DEPLOY_DISCORD_WEBHOOK_URL": self.discord_url,
        }

    def received(self, kind: str) -> list[Any]:
        with self._lock:
            return [d.payload for d in self.deliveries if d.kind == kind]

    def stop(self) -> None:
        self._released.set()
        self._server.stop()


def slack_facts(payload: dict[str, Any]) -> dict[str, str]:
    """Release and outcome as a Slack message shows them (the section fields)."""
    facts: dict[str, str] = {}
    for block in payload.get("blocks", []):
        for item in block.get("fields", []):
            title, _, value = item.get("text", "").partition("\n")
            facts[title.strip("*").lower()] = value.strip("`")
    return facts


def discord_facts(payload: dict[str, Any]) -> dict[str, str]:
    """Release and outcome as a Discord embed shows them."""
    facts: dict[str, str] = {}
    for embed in payload.get("embeds", []):
        for item in embed.get("fields", []):
            facts[str(item.get("name", "")).lower()] = str(item.get("value", "")).strip("`")
    return facts


# --- the guest agent -----------------------------------------------------------------------

GOOGLE_USERS = "/var/lib/google/google_users"  # where the real agent lists the users it made
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# Accounts the sandbox itself needs (its own key is in ubuntu's authorized_keys): never touched.
PROTECTED_USERS = frozenset({"root", "ubuntu"})


def _entry_expired(key: str, now: datetime) -> bool:
    """Whether a `TYPE BLOB google-ssh {json}` key has an expireOn in the past."""
    fields = key.split(" ", 3)
    if len(fields) < 4 or fields[2] != "google-ssh":
        return False
    try:
        stamp = json.loads(fields[3])["expireOn"]
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return True  # the agent ignores entries it cannot read
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment <= now


def wanted_keys(ssh_keys: str | None, now: datetime) -> dict[str, tuple[str, ...]]:
    """USER -> keys from an `ssh-keys` metadata value, expired or unreadable lines left out."""
    wanted: dict[str, list[str]] = {}
    for line in (ssh_keys or "").splitlines():
        user, sep, key = line.strip().partition(":")
        key = key.strip()
        if not sep or not _USER_RE.fullmatch(user) or user in PROTECTED_USERS or not key:
            continue
        if _entry_expired(key, now):
            continue
        wanted.setdefault(user, []).append(key)
    return {user: tuple(keys) for user, keys in sorted(wanted.items())}


_AGENT_SETUP = """set -eu
getent group google-sudoers >/dev/null || groupadd google-sudoers
if [ ! -f /etc/sudoers.d/google_sudoers ]; then
  printf '%s\\n' '%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL' > /etc/sudoers.d/google_sudoers
  chmod 0440 /etc/sudoers.d/google_sudoers
fi
mkdir -p /var/lib/google
touch /var/lib/google/google_users
"""


def agent_script(wanted: Mapping[str, tuple[str, ...]]) -> str:
    """The shell script that makes the guest match WANTED (what the guest agent does)."""
    names = " ".join(wanted)
    lines = [_AGENT_SETUP]
    # Users the agent made earlier whose keys are all gone: empty their authorized_keys.
    lines.append(
        "for u in $(cat /var/lib/google/google_users); do\n"
        f'  case " {names} " in *" $u "*) continue ;; esac\n'
        '  h=$(getent passwd "$u" | cut -d: -f6) || continue\n'
        '  k="$h/.ssh/authorized_keys"\n'
        '  if [ -n "$h" ] && [ -f "$k" ]; then : > "$k"; fi\n'
        "done\n"
    )
    for user, keys in wanted.items():
        u = shlex.quote(user)
        body = shlex.quote("".join(k + "\n" for k in keys))
        lines.append(
            f"id -u {u} >/dev/null 2>&1 || useradd -m -s /bin/bash -G google-sudoers {u}\n"
            f"grep -qx {u} {GOOGLE_USERS} || echo {u} >> {GOOGLE_USERS}\n"
            f"h=$(getent passwd {u} | cut -d: -f6); g=$(id -gn {u})\n"
            f'install -d -m 0700 -o {u} -g "$g" "$h/.ssh"\n'
            f'printf %s {body} > "$h/.ssh/authorized_keys.new"\n'
            f'chown {u}:"$g" "$h/.ssh/authorized_keys.new"\n'
            f'chmod 0600 "$h/.ssh/authorized_keys.new"\n'
            f'mv -f "$h/.ssh/authorized_keys.new" "$h/.ssh/authorized_keys"\n'
        )
    return "".join(lines)


class GuestAgent:
    """The GCE guest agent for one sandbox host, driven by the fake's instance metadata.

    A thread woken by the fake's "metadata" notifications (and every `tick_s` for expiries)
    computes the wanted users and keys and, when they differ from what it last applied, makes
    the guest match through `nsenter`. `applied` records (monotonic time, state) per change.
    """

    def __init__(self, fake: FakeGcp, host: Host, tick_s: float = 0.25) -> None:
        self.fake = fake
        self.host = host
        self.tick_s = tick_s
        self.applied: list[tuple[float, dict[str, tuple[str, ...]]]] = []
        self.errors: list[str] = []
        self._current: dict[str, tuple[str, ...]] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._synced = threading.Condition()
        self._generation = 0
        self._thread = threading.Thread(target=self._run, name="guest-agent", daemon=True)

    def _listener(self, what: str) -> None:
        if what == "metadata":
            self._wake.set()

    def start(self) -> GuestAgent:
        self.fake.listeners.append(self._listener)
        self._thread.start()
        self.wait_synced()
        return self

    def stop(self) -> None:
        if self._listener in self.fake.listeners:
            self.fake.listeners.remove(self._listener)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sync_once()
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def _sync_once(self) -> None:
        with self.fake.lock:
            value = self.fake.state.instance.metadata.get("ssh-keys")
        wanted = wanted_keys(value, datetime.now(timezone.utc))
        if wanted != self._current:
            proc = in_guest(self.host, agent_script(wanted))
            if proc.returncode != 0:
                self.errors.append(proc.stderr.strip() or f"exit {proc.returncode}")
            else:
                self._current = wanted
                self.applied.append((time.monotonic(), wanted))
        with self._synced:
            self._generation += 1
            self._synced.notify_all()

    def wait_synced(self, timeout: float = 15.0) -> None:
        """Until a full pass has run after this call (the guest matches the fake from then)."""
        with self._synced:
            target = self._generation + 2
            self._wake.set()
            if not self._synced.wait_for(lambda: self._generation >= target, timeout):
                raise TimeoutError("the guest agent did not sync")

    def authorized_keys(self, user: str) -> list[str]:
        """USER's authorized_keys on the host, read without SSH ([] when none)."""
        out = guest_output(
            self.host,
            f"h=$(getent passwd {shlex.quote(user)} | cut -d: -f6) || exit 0; "
            'cat "$h/.ssh/authorized_keys" 2>/dev/null || true',
        )
        return [line for line in out.splitlines() if line.strip()]


# --- the firewall --------------------------------------------------------------------------


def _allows_tcp22(rule: Mapping[str, Any]) -> bool:
    for allowed in rule.get("allowed", []):
        proto = str(allowed.get("IPProtocol", "")).lower()
        if proto not in ("tcp", "all", "6"):
            continue
        ports = allowed.get("ports") or []
        if not ports:
            return True
        for spec in ports:
            low, _, high = str(spec).partition("-")
            if int(low) <= SSH_PORT <= int(high or low):
                return True
    return False


def ssh_source_ranges(
    firewalls: Mapping[str, Mapping[str, Any]], tags: list[str], network_name: str
) -> list[ipaddress.IPv4Network]:
    """Source ranges the rules let reach tcp:22 of an instance with TAGS on NETWORK_NAME:
    enabled INGRESS allow rules on that network whose targetTags meet TAGS (or are empty)."""
    ranges: list[ipaddress.IPv4Network] = []
    for rule in firewalls.values():
        if rule.get("disabled") or rule.get("direction", "INGRESS") != "INGRESS":
            continue
        if str(rule.get("network", "")).rstrip("/").rsplit("/", 1)[-1] != network_name:
            continue
        targets = rule.get("targetTags") or []
        if targets and not set(targets) & set(tags):
            continue
        if not _allows_tcp22(rule):
            continue
        for cidr in rule.get("sourceRanges", []):
            try:
                ranges.append(ipaddress.IPv4Network(cidr, strict=False))
            except ValueError:
                continue
    return list(ipaddress.collapse_addresses(ranges))


class FirewallMirror:
    """Enforce the fake's firewall rules for tcp:22 of one sandbox host.

    The table `ip ai_deploy_fwmirror_<index>` hooks this machine's output path: new
    connections to GUEST:22 pass only from an address in the set `allowed`, all others get a
    TCP reset (connection refused). Like GCP's firewall it is stateful: an established
    connection is not cut when its rule goes. The set is rewritten from the fake's state on
    every "firewalls" notification, synchronously, so a rule is enforced by the time its
    operation reports DONE and gone by the time the delete's operation does.
    """

    def __init__(self, fake: FakeGcp, host: Host) -> None:
        self.fake = fake
        self.host = host
        self.table = f"ai_deploy_fwmirror_{host.index}"
        self.history: list[tuple[float, tuple[str, ...]]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _nft(self, script: str) -> None:
        proc = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nft failed: {proc.stderr.strip()}\n{script}")

    def _delete_table(self) -> None:
        subprocess.run(
            ["nft", "delete", "table", "ip", self.table], capture_output=True, check=False
        )

    def install(self) -> FirewallMirror:
        guest = self.host.address
        self._delete_table()
        self._nft(
            f"""table ip {self.table} {{
  set allowed {{
    type ipv4_addr; flags interval; auto-merge;
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    ip daddr {guest} tcp dport {SSH_PORT} ct state established,related accept
    ip daddr {guest} tcp dport {SSH_PORT} ip saddr @allowed accept
    ip daddr {guest} tcp dport {SSH_PORT} reject with tcp reset
  }}
}}
"""
        )
        self.fake.listeners.append(self._listener)
        self.sync()
        return self

    def close(self) -> None:
        if self._listener in self.fake.listeners:
            self.fake.listeners.remove(self._listener)
        self._delete_table()

    def _listener(self, what: str) -> None:
        if what == "firewalls":
            self.sync()

    def sync(self) -> None:
        with self.fake.lock:
            firewalls = {k: dict(v) for k, v in self.fake.state.firewalls.items()}
            tags = list(self.fake.state.instance.tags)
            network_name = self.fake.state.instance.network
        ranges = ssh_source_ranges(firewalls, tags, network_name)
        elements = ", ".join(str(r) for r in ranges)
        script = f"flush set ip {self.table} allowed\n"
        if elements:
            script += f"add element ip {self.table} allowed {{ {elements} }}\n"
        with self._lock:
            try:
                self._nft(script)
            except Exception as exc:  # reported by the test, never raised into the fake
                self.errors.append(str(exc))
                return
            self.history.append((time.monotonic(), tuple(str(r) for r in ranges)))

    def allowed_now(self) -> list[str]:
        """The set as nftables holds it."""
        out = subprocess.run(
            ["nft", "-j", "list", "set", "ip", self.table, "allowed"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found: list[str] = []
        for item in json.loads(out).get("nftables", []):
            for elem in (item.get("set") or {}).get("elem", []):
                if isinstance(elem, str):
                    found.append(f"{elem}/32")
                elif "prefix" in elem:
                    found.append(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                elif "range" in elem:
                    found.append("-".join(elem["range"]))
        return found


# --- the deploy process --------------------------------------------------------------------


@dataclass
class DeployProcess:
    """`python -m ai_deploy.cli COMMAND ARGS` (COMMAND: deploy unless given) started with ENV;
    output collected in `lines`."""

    args: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    command: tuple[str, ...] = ("deploy",)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._done = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ai_deploy.cli", *self.command, *self.args],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> str:
        """The first output line matching the regex PATTERN; raises TimeoutError otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise TimeoutError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def children(self) -> list[int]:
        """PIDs of the deploy process's direct children (pyinfra, ssh)."""
        found: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        return found

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = 300.0) -> int:
        """Wait for the exit code (and the rest of the output)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def deploy_environment(
    base: Mapping[str, str], fake: FakeGcp, extra: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: BASE (credentials as the auth action leaves them, the fake's
    endpoints) plus the seed's GCP_* secrets for the fake's instance, a CI run id, EXTRA;
    no GitHub Actions output mode and no proxies."""
    env = {
        k: v
        for k, v in base.items()
        if k not in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY") and not k.lower().endswith("_proxy")
    }
    env.update(
        {
            "GCP_PROJECT_ID": fake.state.project,
            "GCP_ZONE": fake.state.instance.zone,
            "GCP_INSTANCE": fake.state.instance.name,
            "GITHUB_RUN_ID": "4242",
            "GITHUB_RUN_ATTEMPT": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def mutating_compute_requests(fake: FakeGcp) -> list[str]:
    """`METHOD PATH` of every recorded Compute request that could change something (the
    operations' wait calls are POSTs that change nothing, and are left out)."""
    with fake.lock:
        return [
            f"{r.method} {r.path}"
            for r in fake.requests
            if r.path.startswith("/compute/")
            and r.method in ("POST", "PUT", "PATCH", "DELETE")
            and not re.search(r"/operations/[^/]+/wait$", r.path)
        ]


@dataclass
class PortProbe:
    """SSH reachability seen at named moments (from hooks in the fake or the test)."""

    address: str
    seen: list[tuple[str, str]] = field(default_factory=list)

    def check(self, moment: str) -> str:
        state = ssh_port_state(self.address)
        self.seen.append((moment, state))
        return state

    def states(self, moment: str) -> list[str]:
        return [state for m, state in self.seen if m == moment]


def iter_ssh_keys_writes(fake: FakeGcp) -> Iterator[str | None]:
    """The `ssh-keys` value of each recorded setMetadata body, in order."""
    for request in fake.requests_to("POST", r"/setMetadata$"):
        items = {i["key"]: i.get("value") for i in (request.json() or {}).get("items", [])}
        yield items.get("ssh-keys")


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


__all__ = [
    "PROTECTED_USERS",
    "REPO_ROOT",
    "DeployProcess",
    "FirewallMirror",
    "GuestAgent",
    "MyIpServer",
    "PortProbe",
    "WebhookReceiver",
    "agent_script",
    "container_pid",
    "deploy_environment",
    "discord_facts",
    "guest_output",
    "in_guest",
    "iter_ssh_keys_writes",
    "mutating_compute_requests",
    "process_alive",
    "slack_facts",
    "ssh_port_state",
    "ssh_source_ranges",
    "wait_until",
    "wanted_keys",
]
