"""Small HTTP servers around a deploy: `MyIpServer`, the "what is my IP" service, on the
sandbox link's machine-side address (the source address the guest sees for this machine's
connections), and `WebhookReceiver`, Slack and Discord incoming webhooks that record payloads
and can answer 500 or hang (bounded). Imported through tests/gcp/flowkit.py."""

from __future__ import annotations

import json
import shutil
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ai_deploy.sandbox import network
from tests.fakes.tls import TestCertificates


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


STAND_IN_GCLOUD = """#!{python}
# A stand-in for `gcloud compute start-iap-tunnel` (written by tests/gcp/flowkit_servers.py):
# records its arguments, listens on a loopback port of its choosing, says so as gcloud does
# ("Listening on port [N]."), and carries each connection to the instance's sandbox host port
# 22 as IAP's tunnel carries it.
import json, os, socket, sys, threading, time
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
time.sleep(float(os.environ.get("STAND_IN_GCLOUD_DELAY_S", "0")))  # a slow tunnel, if asked
places = {places!r}
instance = args[2] if len(args) > 2 else ""
zone, address = places.get(instance, ("", ""))
want = ["compute", "start-iap-tunnel", instance, "22", "--local-host-port=localhost:0",
        "--zone", zone, "--project", {project!r}]
if not address or args != want:
    sys.stderr.write("stand-in gcloud: unexpected arguments %r\\n" % (args,))
    sys.exit(2)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
sys.stderr.write("Testing if tunnel connection works.\\n")
sys.stderr.write("Listening on port [%d].\\n" % server.getsockname()[1])
sys.stderr.flush()
def carry(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for sock in (dst, src):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    client, _ = server.accept()
    with open({connections!r}, "a") as log:
        log.write("connection\\n")
    upstream = socket.create_connection((address, 22), timeout=10)
    upstream.settimeout(None)
    threading.Thread(target=carry, args=(client, upstream), daemon=True).start()
    threading.Thread(target=carry, args=(upstream, client), daemon=True).start()
"""


def write_stand_in_gcloud(
    bin_dir: Path,
    log: Path,
    connections: Path,
    project: str,
    places: dict[str, tuple[str, str]],
) -> Path:
    """BIN_DIR/gcloud: the stand-in above for the instances of PLACES (name -> zone, sandbox
    host address), each call's arguments appended to LOG, each connection to CONNECTIONS."""
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(
        STAND_IN_GCLOUD.format(
            python=sys.executable,
            log=str(log),
            places=places,
            project=project,
            connections=str(connections),
        )
    )
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IXUSR)
    return gcloud
