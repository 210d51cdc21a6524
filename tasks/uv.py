"""uv, pinned: the exact binary of uv_version, uploaded from the deployer (no installer piped
from the internet); nothing happens when the host has it already."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Arch
from pyinfra.operations import files

from ai_deploy.host.uvbin import uv_binary


@deploy("uv, pinned")
def uv_installed() -> None:
    d = host.data
    binary = uv_binary(d.uv_version, host.get_fact(Arch))
    files.put(
        name=f"Ensure uv {d.uv_version} is installed at {d.uv_path}",
        src=str(binary),
        dest=d.uv_path,
        user="root",
        group="root",
        mode="755",
    )
