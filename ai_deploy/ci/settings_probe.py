"""The settings the CI entry needs, read from the inventory's group_data by pyinfra's own loader
in a child process (`python -m ai_deploy.ci.settings_probe`): pyinfra's CLI package patches the
standard library with gevent when imported, which the CI entry's signal handling and
subprocesses must not get."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from ai_deploy.artifact.check import ArtifactLimits
from ai_deploy.ci.options import HostSettings, PhaseFailed
from ai_deploy.settings.appfile import PATH_ENV
from ai_deploy.settings.check import SettingsError
from ai_deploy.settings.merge import check_all
from ai_deploy.settings.ssh import Reach

KEYS = (
    "app_module",
    "app_port",
    "health_path",
    "deploy_strategy",
    "app_name",
    "ssh_user",
    "ssh_key",
    "env_file",
    "artifact_max_bytes",
    "artifact_max_members",
    "artifact_max_ratio",
    "models_allow_http",
)


def check_settings(data: Sequence[str], environ: MutableMapping[str, str], cwd: Path) -> None:
    """PhaseFailed("config") naming each unknown or ill-typed setting in the project's
    group_data, the app's ai-deploy.toml and `--data` DATA, before any host is touched. The
    settings file found from CWD is named in ENVIRON's AI_DEPLOY_SETTINGS: the inventory is
    loaded in the project directory and must read the same file."""
    try:
        app = check_all(data, cwd, environ)
    except SettingsError as exc:
        raise PhaseFailed("config", "invalid settings: " + "; ".join(exc.problems)) from None
    if app.path is not None:
        environ[PATH_ENV] = str(app.path.resolve())


def read_settings(
    inventory: str, data: Sequence[str], environ: Mapping[str, str], host: str
) -> HostSettings:
    """HostSettings for INVENTORY's first host, with --data DATA, as `pyinfra` would see them."""
    proc = subprocess.run(
        [sys.executable, "-m", "ai_deploy.ci.settings_probe", inventory, *data],
        env=Reach(hosts=(host,)).env(environ),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PhaseFailed(
            "config", f"reading the inventory's settings failed: {proc.stderr.strip()[-500:]}"
        ) from None
    if not answer.get("ok"):
        raise PhaseFailed("config", str(answer.get("error")))
    s = answer["settings"]
    return HostSettings(
        app_module=str(s["app_module"]),
        app_port=int(s["app_port"]),
        health_path=str(s["health_path"]),
        deploy_strategy=str(s["deploy_strategy"]),
        app_name=str(s["app_name"]),
        ssh_user=s.get("ssh_user"),
        env_file=s.get("env_file"),
        limits=ArtifactLimits.from_data(s),
        models_allow_http=str(s.get("models_allow_http")).lower() in ("true", "yes", "1", "on"),
        ssh_key=s.get("ssh_key"),
        ssh_sources=dict(answer.get("sources") or {}),
    )


def _probe(inventory: str, items: Sequence[str]) -> dict[str, Any]:
    from pyinfra_cli.util import parse_cli_arg

    from ai_deploy.inventory import RemoteError, host_settings
    from ai_deploy.settings.layers import source_in

    data: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return {"ok": False, "error": f"--data {item!r} is not KEY=VALUE"}
        data[key] = parse_cli_arg(value)
    try:
        found = host_settings(inventory, data)
    except RemoteError as exc:
        return {"ok": False, "error": f"reading the inventory's settings: {exc}"}
    if not found:
        return {"ok": False, "error": f"inventory {inventory} has no hosts"}
    d = next(iter(found.values()))
    sources = {key: source_in(d, key) for key in ("ssh_user", "ssh_key")}
    return {"ok": True, "settings": {key: d.get(key) for key in KEYS}, "sources": sources}


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1], sys.argv[2:]), default=str))
