"""The settings of one host's deploy, read from its pyinfra data (group_data and --data).

Defaults live in group_data/all.py only: `Spec.from_data` reads every setting by name and has
none of its own (a setting the data lacks is group_data/all.py's, a derived one derived from the
data's app_name), so the pyinfra run, the `ai-deploy` commands and the CI entry agree."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ai_deploy.host.paths import Layout
from ai_deploy.host.release.identity import RUN_ID, Machine, this_machine
from ai_deploy.project import group_data_defaults
from ai_deploy.settings.derive import DERIVED, DERIVED_FROM, derived_values

_MISSING = object()


@dataclass(frozen=True)
class Spec:
    """Everything the release gate needs for one host, decided on the deployer before the run."""

    # from group_data
    layout: Layout  # app_root, app_name, app_log_dir, app_cache_dir
    port: int
    health_path: str
    deadline_s: float
    deadline_max_s: float  # progress reported on health_path extends deadline_s up to this
    ready_path: str | None  # the ready probe (ai_deploy.host.release.readiness); None: none
    ready_method: str
    ready_body: str | None
    ready_status: int
    interval_s: float
    fail_after_errors: int
    keep: int
    lock_wait_s: float
    lock_lease_s: float
    code_owner: str
    build_user: str
    artifact_max_bytes: int
    artifact_max_members: int
    artifact_max_ratio: float
    venv_space_bytes: int
    uv_path: str
    uv_python: str
    uv_python_downloads: str
    uv_env: Mapping[str, str]
    strategy: str  # a name in ai_deploy.host.strategies.STRATEGIES
    colour_ports: tuple[int, int]  # bluegreen: blue, green
    drain_s: float  # bluegreen: how long the old colour finishes its requests
    drain_timeout_s: float  # the longest an open connection is waited for before a stop
    drain_mode: str  # socket/restart: "wait" for the old process's connections, or "cut" them
    nginx_upstream: str
    # bluegreen on a GPU host: MiB a second copy needs (None: what the live colour holds), and
    # what happens when it does not fit ("restart": the live colour stops first; "refuse")
    gpu_memory_needed_mib: int | None
    gpu_memory_when_short: str
    # behind a load balancer (ai_deploy.host.lbdrain): drain through lb_health_path first
    lb_drain: bool
    app_host: str  # where nginx answers lb_health_path (the host probes it there)
    lb_health_path: str
    lb_health_port: int  # app_port unless set
    lb_drain_wait_s: float
    lb_upstream_port: int  # socket / restart with lb_drain: where the app listens (127.0.0.1)
    # model files (ai_deploy.host.release.models)
    app_group: str
    models_allow_http: bool
    models_fetch_timeout_s: float
    models_fetch_retries: int
    models_verify: bool
    models_reserve_bytes: int
    models_gcs_url: str
    models_metadata_host: str
    # this run
    action: str = "deploy"  # deploy | rollback | restart
    release_id: str = ""
    who: str = field(default_factory=lambda: deploy_who())
    deployer: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    machine: Machine = field(default_factory=this_machine)  # with pid and run_id: the holder
    run_id: str = RUN_ID
    artifact_remote: str | None = None
    artifact_sha256: str | None = None
    lock_hash: str | None = None
    models: tuple[
        Any, ...
    ] = ()  # ai_deploy.artifact.models_manifest.Model of the release's manifest
    # a rollout holds the lock (its info has this token): join it, never take or drop it
    lock_token: str | None = None

    @classmethod
    def from_data(cls, data: Any, **run: Any) -> Spec:
        """The spec for host DATA (pyinfra's host.data or a mapping of group_data names); a
        setting DATA lacks takes group_data/all.py's default."""
        get = setting_reader(data)
        return cls(
            layout=Layout.from_data({name: get(name) for name in Layout.SETTINGS}),
            port=int(get("app_port")),
            health_path=str(get("health_path")),
            deadline_s=float(get("health_deadline_s")),
            deadline_max_s=float(get("health_deadline_max_s")),
            ready_path=_optional_str(get("ready_path")),
            ready_method=str(get("ready_method")),
            ready_body=_optional_str(get("ready_body")),
            ready_status=int(get("ready_status")),
            interval_s=float(get("health_interval_s")),
            fail_after_errors=int(get("health_fail_after_errors")),
            keep=int(get("releases_keep")),
            lock_wait_s=float(get("lock_wait_s")),
            lock_lease_s=float(get("lock_lease_s")),
            code_owner=str(get("code_owner")),
            build_user=str(get("build_user")),
            artifact_max_bytes=int(get("artifact_max_bytes")),
            artifact_max_members=int(get("artifact_max_members")),
            artifact_max_ratio=float(get("artifact_max_ratio")),
            venv_space_bytes=int(get("venv_space_bytes")),
            uv_path=str(get("uv_path")),
            uv_python=str(get("uv_python")),
            uv_python_downloads=str(get("uv_python_downloads")),
            uv_env={str(k): str(v) for k, v in dict(get("uv_env") or {}).items()},
            strategy=str(get("deploy_strategy")),
            colour_ports=tuple(int(p) for p in get("bluegreen_ports")),  # type: ignore[arg-type]
            drain_s=float(get("bluegreen_drain_s")),
            drain_timeout_s=float(get("drain_timeout_s")),
            drain_mode=str(get("drain_mode")),
            nginx_upstream=str(get("bluegreen_upstream")),
            gpu_memory_needed_mib=_optional_int(get("gpu_memory_needed_mib")),
            gpu_memory_when_short=str(get("gpu_memory_when_short")),
            lb_drain=flag(get("lb_drain")),
            app_host=str(get("app_host")),
            lb_health_path=str(get("lb_health_path")),
            lb_health_port=int(get("lb_health_port") or get("app_port")),
            lb_drain_wait_s=float(get("lb_drain_wait_s")),
            lb_upstream_port=lb_upstream_port(get("app_port"), get("lb_upstream_port")),
            app_group=str(get("app_group")),
            models_allow_http=flag(get("models_allow_http")),
            models_fetch_timeout_s=float(get("models_fetch_timeout_s")),
            models_fetch_retries=int(get("models_fetch_retries")),
            models_verify=flag(get("models_verify")),
            models_reserve_bytes=int(get("models_space_reserve_bytes")),
            models_gcs_url=str(get("models_gcs_url")),
            models_metadata_host=str(get("models_metadata_host")),
            **run,
        )

    def with_run(self, **run: Any) -> Spec:
        return replace(self, **run)

    @property
    def app_root(self) -> str:
        return self.layout.app_root

    @property
    def app_name(self) -> str:
        return self.layout.app_name

    @property
    def service(self) -> str:
        return self.layout.service


def setting_reader(data: Any) -> Callable[[str], Any]:
    """Reads a setting from DATA (pyinfra's host.data or a mapping) by its group_data name; one
    DATA does not hold is group_data/all.py's default, a derived one (app_root, ...) derived
    from DATA's app_name."""
    fallback: dict[str, Any] = {}

    def own(name: str) -> Any:
        if isinstance(data, Mapping):
            return data.get(name, _MISSING)
        return getattr(data, name, _MISSING)

    def get(name: str) -> Any:
        value = own(name)
        if value is not _MISSING:
            return value
        if not fallback:
            fallback.update(group_data_defaults())
            app_name = own(DERIVED_FROM)
            if app_name is not _MISSING:
                fallback.update(derived_values({DERIVED_FROM: app_name} | dict.fromkeys(DERIVED)))
        return fallback[name]

    return get


def lb_upstream_port(app_port: Any, setting: Any) -> int:
    """Where the app listens behind nginx's front with lb_drain (socket, restart): the setting,
    else app_port + 10000."""
    return int(setting) if setting else int(app_port) + 10_000


def flag(value: Any) -> bool:
    """A setting given as True/False, or as text from --data ("true", "yes", "1")."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return bool(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def deploy_who() -> str:
    """Who deploys: the GitHub actor and run in Actions, else user@hostname."""
    actor = os.environ.get("GITHUB_ACTOR")
    if actor:
        return f"{actor}@github-run-{os.environ.get('GITHUB_RUN_ID', '?')}"
    return f"{getpass.getuser()}@{socket.gethostname()}"
