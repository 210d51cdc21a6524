"""Where the sandbox keeps its cache (base image, test key) and the state of live hosts.

Both live outside the repository. The cache survives across runs; host state is removed by
`sandbox down`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The base image and the sandbox SSH key (AI_DEPLOY_CACHE, default /var/cache/ai-deploy)."""
    return Path(os.environ.get("AI_DEPLOY_CACHE", "/var/cache/ai-deploy"))


def state_dir() -> Path:
    """Live hosts and their inventories (AI_DEPLOY_STATE, default /var/lib/ai-deploy/sandbox)."""
    return Path(os.environ.get("AI_DEPLOY_STATE", "/var/lib/ai-deploy/sandbox"))


def hosts_dir() -> Path:
    return state_dir() / "hosts"


def inventories_dir() -> Path:
    return state_dir() / "inventories"


def ssh_key_path() -> Path:
    """The private key whose public half every sandbox host authorizes for `ubuntu`."""
    return cache_dir() / "ssh" / "id_ed25519"
