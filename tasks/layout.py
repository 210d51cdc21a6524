"""The service user, the app's directory tree, its data and cache directories, and its logs."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import User, Users
from pyinfra.operations import apt, files, server

from ai_deploy.host.cache import cache_problems
from ai_deploy.host.event_hooks import WARN, tell
from ai_deploy.host.facts import UserCanSudo
from ai_deploy.host.paths import Layout
from ai_deploy.project import template


def _system_users() -> None:
    """The service user and the build user: system accounts with no login shell and no home
    to log into. A user that already exists (the seed's `ubuntu`) is left as it is, and a
    service user that can sudo is named in a warning on every run."""
    d = host.data
    existing = host.get_fact(Users)
    for user, group, what in (
        (d.app_user, d.app_group, "service"),
        (d.build_user, d.build_user, "build"),
    ):
        if user in existing:
            continue
        server.group(name=f"Ensure the {what} group {group} exists", group=group, system=True)
        server.user(
            name=f"Ensure the {what} user {user} exists (system, no login)",
            user=user,
            group=group,
            home="/nonexistent",
            shell="/usr/sbin/nologin",
            system=True,
            ensure_home=False,
            present=True,
        )
    if host.get_fact(UserCanSudo, user=d.app_user, _sudo=True):
        tell(
            host,
            f"app_user {d.app_user} can sudo: the service (and anything "
            "that takes it over) can become root; set app_user to a user of its own "
            "(the default, ai-server)",
            WARN,
        )


def upload_staging_dir(app_root: str) -> str:
    """Where pyinfra stages this deploy's uploads (deploy.py sets it as its TEMP_DIR)."""
    return f"{app_root}/.staging"


@deploy("Service user, directories and logs")
def app_layout_present() -> None:
    d = host.data
    root = d.app_root
    layout = Layout.from_data(d)
    problems = cache_problems(layout, d.app_data_dirs, d.app_cache_env)
    if problems:
        raise OperationError("; ".join(problems))
    _system_users()
    for path, mode in ((root, "755"), (f"{root}/releases", "755"), (f"{root}/venvs", "755")):
        files.directory(
            name=f"Ensure {path} exists, owned by {d.code_owner}",
            path=path,
            user=d.code_owner,
            group=d.code_owner,
            mode=mode,
        )
    # pyinfra uploads over SFTP as the SSH user, then copies with sudo: its staging directory
    # must be that user's, 0700, under a root-owned tree (not a predictable name in /tmp). The
    # SSH user can sudo anyway: private to it is private to root.
    files.directory(
        name="Ensure pyinfra's staging directory is private to the SSH user",
        path=upload_staging_dir(root),
        user=host.get_fact(User, _sudo=False),
        mode="700",
    )
    files.directory(
        name="Ensure the upload directory is private",
        path=f"{root}/.incoming",
        user="root",
        group="root",
        mode="700",
    )
    for data_dir in d.app_data_dirs:
        files.directory(
            name=f"Ensure data directory {data_dir} is owned by {d.app_user}",
            path=f"{root}/{data_dir}",
            user=d.app_user,
            group=d.app_group,
            mode="750",
        )
    # The service's HOME and caches: never world-readable (models and tokens land here).
    files.directory(
        name=f"Ensure the cache directory {layout.cache_dir} is private to {d.app_user}",
        path=layout.cache_dir,
        user=d.app_user,
        group=d.app_group,
        mode="700",
    )
    files.directory(
        name=f"Ensure the log directory {d.app_log_dir} exists",
        path=d.app_log_dir,
        user="root",
        group=d.app_group,
        mode="755",
    )
    if "logrotate" not in host.get_fact(DebPackages):
        apt.packages(name="Ensure logrotate is installed", packages=["logrotate"], update=True)
    files.template(
        name="Ensure the service's logs are rotated",
        src=template("logrotate.j2"),
        dest=f"/etc/logrotate.d/{d.app_name}",
        mode="644",
        log_dir=d.app_log_dir,
        app_name=d.app_name,
        keep_days=d.app_log_rotate_days,
    )
