"""`ai-deploy demo`: a sandbox host, the example artifact, a real deploy, a health check from
this machine, and the URL it answers on. A second run reuses the host and the release."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

from ai_deploy.artifact.build import build_artifact
from ai_deploy.ci.settings_probe import read_settings
from ai_deploy.inventory import run_pyinfra
from ai_deploy.project import project_dir
from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.image import SandboxError
from ai_deploy.sandbox.paths import state_dir

DEMO_HOST = "demo"


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _demo_host() -> tuple[hosts.Host, Path]:
    for host in hosts.list_hosts():
        if host.name == DEMO_HOST:
            if host.running and Path(host.inventory).is_file():
                _say(f"reusing sandbox host {host.name} at {host.address}")
                return host, Path(host.inventory)
            _say(f"sandbox host {host.name} is not running; making a new one")
            hosts.down([host.name])
    _say("booting a sandbox host (the first run also builds the base image, about a minute)")
    started, inventory = hosts.up(count=1, name=DEMO_HOST)
    return started[0], inventory


def run_demo() -> int:
    started = time.monotonic()
    host, inventory = _demo_host()
    _say("building the example artifact from examples/ai-server")
    artifact = build_artifact(project_dir() / "examples" / "ai-server", state_dir() / "demo")
    _say(f"deploying {artifact.name} with pyinfra")
    rc = run_pyinfra(str(inventory), {"artifact": str(artifact)})
    if rc != 0:
        raise SandboxError(f"the deploy failed (pyinfra exit {rc}); its output above says why")
    settings = read_settings(str(inventory), [], os.environ, host.address)
    url = f"http://{host.address}:{settings.app_port}"
    health = f"{url}{settings.health_path}"
    reply = requests.get(health, timeout=10)
    if reply.status_code != 200:
        raise SandboxError(f"{health} answered {reply.status_code}: {reply.text[:200]}")
    release = reply.json().get("release")
    _say(f"done in {time.monotonic() - started:.1f} s; release {release} is healthy")
    print(f"The example AI server answers on {url} (try: curl {url}/predict)")
    print(f"Remove the sandbox with: ai-deploy sandbox down {host.name}")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="deploy the example AI server to a local sandbox host and print its URL"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_demo()
