"""`--dry-run` and `--plan` change nothing on any host and take no lock, whatever the target:
two sandbox hosts serve a release, then a newer one is previewed over the fleet named by an
inventory (`-i`), by an environment's `hosts` in ai-deploy.toml (`-e`), and on one `--host`.
Every host's releases, links, venvs, lock, revisions.log and service stay as they were, and no
notification is sent (a loopback webhook receiver hears nothing). The GCP label fleet's preview
is in tests/gcp/test_gcp_fleet.py."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_deploy.sandbox import hosts
from ai_deploy.sandbox.paths import ssh_key_path
from tests.e2e.conftest import Sandbox, boot
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    build_variant,
    read_host,
    run_cli,
    serving_release,
)
from tests.gcp.flowkit_servers import WebhookReceiver

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Pair:
    hosts: list[Sandbox]
    inventory: Path
    served: Artifact
    newer: Artifact
    env_file: Path
    app_dir: Path  # holds an ai-deploy.toml whose `staging` environment lists both hosts


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    work = tmp_path_factory.mktemp("preview")
    served = build_variant(work, "preview-served")
    newer = build_variant(work, "preview-newer")
    env_file = work / "app.env"
    env_file.write_text("MODEL_LOAD_SECONDS=1\n")
    started, inventory = boot("preview-pair", count=2)
    try:
        sandboxes = sorted((Sandbox(h, inventory) for h in started), key=lambda s: s.name)
        app_dir = work / "app"
        app_dir.mkdir()
        addresses = ", ".join(f'"{s.address}"' for s in sandboxes)
        (app_dir / "ai-deploy.toml").write_text(
            f"[environments.staging]\nhosts = [{addresses}]\n"
            f'ssh_user = "ubuntu"\nssh_key = "{ssh_key_path()}"\n'
        )
        yield Pair(sandboxes, inventory, served, newer, env_file, app_dir)
    finally:
        hosts.down([h.name for h in started])


def _ai_deploy(
    pair: Pair, artifact: Artifact, *args: str, cwd: Path = REPO, ssh: bool, **env: str
) -> tuple[int, str]:
    """`ai-deploy deploy` of ARTIFACT with ARGS; SSH false: no AI_DEPLOY_ variable at all."""
    return run_cli(
        AI_DEPLOY, cwd, "deploy", "--artifact", str(artifact.path), "--no-gcp",
        "--health-interval", "1", "--health-attempts", "20",
        "--data", f"env_file={pair.env_file}", *args, ssh=ssh, **env,
    )  # fmt: skip


def _state(h: Sandbox) -> str:
    """What a deploy would change: releases, links, venvs, the lock, revisions.log, the unit
    and the service's process."""
    root = shlex.quote(APP_ROOT)
    return read_host(
        h,
        f"ls -1 {root}/releases {root}/venvs\n"
        f"readlink {root}/current {root}/previous || true\n"
        f"if [ -e {root}/.deploy.lock ]; then echo LOCKED; ls -la {root}/.deploy.lock; fi\n"
        f"cat {root}/revisions.log\n"
        "systemctl show -p MainPID -p ActiveState ai-server.service ai-server.socket\n"
        "md5sum /etc/systemd/system/ai-server.service",
        "the deploy's state",
    )


def _states(pair: Pair) -> dict[str, str]:
    return {h.name: _state(h) for h in pair.hosts}


def test_1_both_hosts_serve_a_release(pair: Pair) -> None:
    code, out = _ai_deploy(pair, pair.served, "-i", str(pair.inventory), ssh=False)
    assert code == 0, out
    for h in pair.hosts:
        assert serving_release(h.address) == pair.served.release_id


@pytest.mark.parametrize("preview", ["--dry-run", "--plan"])
@pytest.mark.parametrize("target", ["inventory", "environment", "host"])
def test_2_a_preview_changes_nothing_and_tells_nobody(
    pair: Pair, target: str, preview: str
) -> None:
    before = _states(pair)
    assert "LOCKED" not in "".join(before.values())
    receiver = WebhookReceiver()
    cwd, ssh = REPO, False  # the inventory, or the toml's environment, says how to reach hosts
    if target == "inventory":
        args: tuple[str, ...] = ("-i", str(pair.inventory))
    elif target == "environment":
        args, cwd = ("-e", "staging"), pair.app_dir  # its hosts, ssh_user and ssh_key
    else:
        args, ssh = ("--host", pair.hosts[0].address), True  # the key from the environment
    try:
        code, out = _ai_deploy(pair, pair.newer, *args, preview, cwd=cwd, ssh=ssh, **receiver.env())
    finally:
        receiver.stop()

    assert code == 0, out
    assert pair.newer.release_id in out  # the preview names the release it would put live
    assert _states(pair) == before
    for h in pair.hosts:
        assert serving_release(h.address) == pair.served.release_id
    assert receiver.deliveries == [], "a preview sent a notification"
    assert "notification to" not in out
