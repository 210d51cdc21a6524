"""The service user, the app's directory tree, its data directories, and its logs."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files, server

from ai_deploy.project import template


@deploy("Service user, directories and logs")
def app_layout_present() -> None:
    d = host.data
    root = d.app_root
    server.user(name="Ensure the service user exists", user=d.app_user, present=True)
    for path, mode in ((root, "755"), (f"{root}/releases", "755"), (f"{root}/venvs", "755")):
        files.directory(
            name=f"Ensure {path} exists, owned by {d.code_owner}",
            path=path,
            user=d.code_owner,
            group=d.code_owner,
            mode=mode,
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
