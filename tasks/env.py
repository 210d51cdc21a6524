"""The service's .env: app_root/.env, mode 0600, owned by the service user. Its content is
uploaded from env_file when given (never printed), written from env_default when the host has
none, or left as it is."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import files

from ai_deploy.host.ops import secret_file


@deploy(".env file")
def env_file_present() -> OperationMeta | None:
    """Returns the operation that may change the content (None when content is left alone)."""
    d = host.data
    dest = f"{d.app_root}/.env"
    if d.env_file:
        source = Path(d.env_file).expanduser()
        if not source.is_file():
            raise OperationError(f"env_file {source} does not exist (--data env_file=PATH)")
        return secret_file(
            name=f"Ensure {dest} has the content of {source.name} (not shown)",
            content=source.read_bytes(),
            dest=dest,
            user=d.app_user,
            group=d.app_group,
        )
    existing = host.get_fact(File, path=dest, _sudo=True)
    if not existing:
        if d.env_default is None and not d.env_allow_empty:
            raise OperationError(
                f"{host.name} has no {dest} and no env_file was given: pass "
                "--data env_file=PATH, or set env_default / env_allow_empty in group_data"
            )
        return secret_file(
            name=f"Ensure {dest} exists (from env_default)",
            content=(d.env_default or "").encode(),
            dest=dest,
            user=d.app_user,
            group=d.app_group,
        )
    files.file(
        name=f"Ensure {dest} is 0600 and owned by {d.app_user}",
        path=dest,
        user=d.app_user,
        group=d.app_group,
        mode="600",
        _sudo=True,
    )
    return None
