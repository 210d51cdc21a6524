"""The pinned uv binary the deploy ships to hosts, obtained on the deployer through a package
client (which checks the wheel's hash against the index) and cached by version and platform.

Hosts never run an installer piped from the internet: the deploy uploads this binary and
pyinfra's checksum comparison skips the upload when the host already has the same file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PLATFORMS = {
    "x86_64": "x86_64-manylinux_2_17",
    "amd64": "x86_64-manylinux_2_17",
    "aarch64": "aarch64-manylinux_2_17",
    "arm64": "aarch64-manylinux_2_17",
}
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


class UvBinaryError(Exception):
    """The pinned uv binary could not be obtained; the message says why and what to do."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("AI_DEPLOY_UV_CACHE", Path(base) / "ai-deploy" / "uv"))


def _installer() -> list[str]:
    """A package client able to install a wheel for another platform into a folder."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if Path(uv).exists():
        return [uv, "pip", "install", "--quiet"]
    raise UvBinaryError(
        "uv is needed on the deployer to fetch the pinned uv for hosts "
        "(pip install uv, or see the README's set-up)"
    )


def uv_binary(version: str, arch: str) -> Path:
    """Path of the uv VERSION binary for a host of ARCH (`uname -m`), fetched once and cached."""
    if not VERSION_RE.match(version):
        raise UvBinaryError(f"uv_version {version!r} is not a plain version like 0.13.9")
    platform = PLATFORMS.get(arch)
    if platform is None:
        raise UvBinaryError(f"no uv build known for host architecture {arch!r}")
    final = cache_root() / f"{version}-{platform}" / "uv"
    if final.is_file():
        return final
    final.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent.parent, prefix=".fetch-") as tmp:
        cmd = [
            *_installer(),
            "--no-deps",
            "--target",
            tmp,
            "--python-platform",
            platform,
            "--python-version",
            "3.10",
            f"uv=={version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        binary = Path(tmp) / "bin" / "uv"
        if proc.returncode != 0 or not binary.is_file():
            raise UvBinaryError(
                f"could not fetch uv {version} for {platform}: {proc.stderr.strip()[-500:]}"
            )
        staged = Path(tmp) / "uv.staged"
        shutil.copy2(binary, staged)
        staged.chmod(0o755)
        final.parent.mkdir(exist_ok=True)
        os.replace(staged, final)
    return final
