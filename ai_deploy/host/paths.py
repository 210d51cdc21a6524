"""The host's layout, named once: the app tree, the unit names, the nginx files and the
revisions.log line. Everything that reads or changes a host takes its paths from here."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VENV_COMPLETE = ".ai-deploy-complete"  # a venv holding it was built to the end
ARTIFACT_SHA256 = ".artifact-sha256"  # in a release: the sha256 of the artifact it came from
LOCK_DIR = ".deploy.lock"
UNIT_DIR = "/etc/systemd/system"
NGINX_SITES_AVAILABLE = "/etc/nginx/sites-available"
NGINX_SITES_ENABLED = "/etc/nginx/sites-enabled"
# The first words of a line that marks our nginx site as the lb front (templates/ai-server.nginx.j2)
LB_FRONT_MARK = "# ai-deploy: lb front"
COLOURS = ("blue", "green")
MODEL_STORE = "models"  # under app_root: model files stored once by sha256
MODEL_BLOBS = "blobs"  # in the store: <sha256> and <sha256>.verified
MODEL_PARTIALS = ".partial"  # in the store: downloads under way, <sha256>.part
CACHE_DIR = "cache"  # under app_root, unless app_cache_dir names another directory
# What the deploy keeps directly under app_root: a cache directory may not be one of them.
APP_TREE_NAMES = (
    "releases",
    "venvs",
    MODEL_STORE,
    "healthy",
    "colors",
    "current",
    "previous",
    ".incoming",
    ".staging",
    LOCK_DIR,
    ".env",
    "revisions.log",
)


@dataclass(frozen=True)
class Layout:
    """Paths and unit names for one app on one host (app_root, app_name, app_log_dir and
    app_cache_dir)."""

    app_root: str
    app_name: str
    log_dir: str
    cache_setting: str | None = None  # app_cache_dir: None for <app_root>/cache

    SETTINGS = ("app_root", "app_name", "app_log_dir", "app_cache_dir")  # what it is built from

    @classmethod
    def from_data(cls, data: Any) -> Layout:
        """The layout of host DATA (pyinfra's host.data, or a mapping of group_data names); the
        one place a Layout is built from settings."""
        get = data.get if isinstance(data, Mapping) else lambda name: getattr(data, name, None)
        cache = get("app_cache_dir")
        return cls(
            str(get("app_root")),
            str(get("app_name")),
            str(get("app_log_dir")),
            str(cache) if cache else None,
        )

    # --- the app tree (shell-quoted: for scripts) ---
    @property
    def root(self) -> str:
        return shlex.quote(self.app_root)

    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    def release(self, release_id: str) -> str:
        return f"{self.releases}/{shlex.quote(release_id)}"

    @property
    def venvs(self) -> str:
        return f"{self.root}/venvs"

    def venv(self, lock_hash: str) -> str:
        return f"{self.venvs}/{shlex.quote(lock_hash)}"

    def link(self, name: str) -> str:
        """`current` or `previous`."""
        return f"{self.root}/{name}"

    @property
    def healthy(self) -> str:
        """healthy/<release id>: the release passed the gate; holds its artifact's sha256."""
        return f"{self.root}/healthy"

    @property
    def last_start(self) -> str:
        """last-start.json: the last start's measures (release, strategy, outage_s, start_s,
        at), written by the release gate; read by the rollout's plan."""
        return f"{self.root}/last-start.json"

    @property
    def lock(self) -> str:
        return f"{self.root}/{LOCK_DIR}"

    @property
    def incoming(self) -> str:
        return f"{self.root}/.incoming"

    @property
    def colors(self) -> str:
        return f"{self.root}/colors"

    @property
    def revisions(self) -> str:
        return f"{self.root}/revisions.log"

    # --- the model store (ai_deploy.host.release.models; unquoted *_dir: for the fetcher's job)
    @property
    def model_store_dir(self) -> str:
        return f"{self.app_root.rstrip('/')}/{MODEL_STORE}"

    @property
    def model_blobs_dir(self) -> str:
        return f"{self.model_store_dir}/{MODEL_BLOBS}"

    @property
    def model_partials_dir(self) -> str:
        return f"{self.model_store_dir}/{MODEL_PARTIALS}"

    @property
    def model_store(self) -> str:
        return shlex.quote(self.model_store_dir)

    @property
    def model_blobs(self) -> str:
        return shlex.quote(self.model_blobs_dir)

    @property
    def cache_dir(self) -> str:
        """The service's persistent cache directory (its HOME), unquoted: for settings and
        unit files."""
        return self.cache_setting or f"{self.app_root.rstrip('/')}/{CACHE_DIR}"

    @property
    def cache(self) -> str:
        return shlex.quote(self.cache_dir)

    def error_log(self, colour: str | None = None) -> str:
        name = f"{self.app_name}-{colour}" if colour else self.app_name
        return shlex.quote(f"{self.log_dir}/{name}-error.log")

    # --- units ---
    @property
    def service(self) -> str:
        return f"{self.app_name}.service"

    @property
    def socket(self) -> str:
        return f"{self.app_name}.socket"

    @property
    def colour_template(self) -> str:
        return f"{self.app_name}@.service"

    def colour_unit(self, colour: str) -> str:
        return f"{self.app_name}@{colour}.service"

    def unit_file(self, unit: str) -> str:
        return f"{UNIT_DIR}/{unit}"

    def related_units(self) -> list[str]:
        """The units whose state tells which deploy strategy a host runs."""
        return [
            self.service,
            self.socket,
            *(self.colour_unit(c) for c in COLOURS),
            "nginx.service",
        ]

    # --- nginx (blue/green) ---
    @property
    def nginx_site(self) -> str:
        return f"{NGINX_SITES_ENABLED}/{self.app_name}"

    @property
    def nginx_site_available(self) -> str:
        return f"{NGINX_SITES_AVAILABLE}/{self.app_name}"

    # --- behind a load balancer (lb_drain) ---
    @property
    def lb_drained(self) -> str:
        """The flag that makes nginx answer lb_health_path with 503 (under /run: a reboot
        clears it, and the host is then in service as soon as its app is healthy)."""
        return f"/run/{self.app_name}.lb-drained"


def revisions_line(
    when: str, action: str, release: str, outcome: str, who: str, detail: str = ""
) -> str:
    """One line of revisions.log: `WHEN ACTION RELEASE OUTCOME by=WHO [DETAIL]`, on one line."""
    line = f"{when} {action} {release} {outcome} by={who}"
    if detail:
        line += f" {detail}"
    return re.sub(r"[\r\n]+", " ", line)
