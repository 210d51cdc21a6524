"""Settings derived from `app_name`: group_data/all.py leaves them at None, and one pure function
fills in each one that is still None once every layer is merged, so `--data app_name=x` derives
too and a value set anywhere always wins. Two apps with different names get different roots,
users, logs and nginx upstream files on one VM."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

DERIVED_FROM = "app_name"
SOURCE = f"derived from {DERIVED_FROM}"

# setting -> its value for an app named NAME
_RULES: dict[str, Callable[[str], str]] = {
    "app_root": lambda name: f"/app/{name}",
    "app_user": lambda name: name,
    "app_group": lambda name: name,
    "build_user": lambda name: f"{name}-build",
    "app_log_dir": lambda name: f"/var/log/{name}",
    "bluegreen_upstream": lambda name: f"/etc/nginx/{name}-upstream.conf",
}
DERIVED = tuple(_RULES)


def derived_values(merged: Mapping[str, Any]) -> dict[str, str]:
    """The derived settings that MERGED (every layer's values merged) leaves at None or does
    not hold, each filled from MERGED's app_name; {} when app_name is not a non-empty string."""
    name = merged.get(DERIVED_FROM)
    if not isinstance(name, str) or not name.strip():
        return {}
    return {
        setting: rule(name.strip())
        for setting, rule in _RULES.items()
        if merged.get(setting) is None
    }
