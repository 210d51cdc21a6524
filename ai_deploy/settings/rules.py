"""Value rules for the string settings that reach a systemd unit, the nginx site, logrotate, a
shell script or a Python probe on the host: a value that passes cannot add a line, a directive,
a word or a path outside what the setting names (a newline in app_module would add a root
ExecStartPre= to the hardened unit). Kinds are checked first (ai_deploy.settings.values); these
say what a well-kinded value may hold."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Path characters with no meaning to systemd (%, $, \, quotes, whitespace), nginx (;, {, }, #)
# or a shell (quotes, $, `, ;, |, &, <, >, *, ?).
_PATH_CHARS = re.compile(r"[A-Za-z0-9._@+,=:/-]*")
_DEVICE = re.compile(r"(char|block)-[A-Za-z0-9._+*-]+")
_DEVICE_PATH_CHARS = re.compile(r"[A-Za-z0-9._@+,:/*-]*")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[A-Za-z0-9._+-]+")
_UNSAFE_IN_PATH = re.compile(r"[\s\x00-\x1f\x7f'\"`\\]")
_UNSAFE_IN_URL = re.compile(r"[\s\x00-\x1f\x7f'\"`\\<>{}|^]")

PATH_RULE = (
    "an absolute path of letters, digits and . _ - + @ , = : / (no '..' part, no '//', no "
    "trailing /, no whitespace, quotes, % or $)"
)
NAME_RULE = "a name matching [a-z0-9][a-z0-9._-]*"


def _clean_parts(path: str) -> bool:
    return "//" not in path and ".." not in path.split("/")


def _abs_path(value: str) -> str | None:
    ok = (
        value.startswith("/")
        and _PATH_CHARS.fullmatch(value) is not None
        and _clean_parts(value)
        and (value == "/" or not value.endswith("/"))
    )
    return None if ok else PATH_RULE


def _rel_path(value: str) -> str | None:
    ok = (
        value
        and not value.startswith("/")
        and _PATH_CHARS.fullmatch(value) is not None
        and _clean_parts("/" + value.rstrip("/"))
        and "." not in value.split("/")
    )
    rule = "a path under app_root of letters, digits and . _ - + @ , = : / (no '..' part, no '//')"
    return None if ok else rule


def _name(value: str) -> str | None:
    return None if _NAME.fullmatch(value) else NAME_RULE


def _user(value: str) -> str | None:
    if _NAME.fullmatch(value) and len(value) <= 32:
        return None
    return f"{NAME_RULE}, at most 32 characters"


def _module(value: str) -> str | None:
    module, sep, attr = value.partition(":")
    parts = [*module.split("."), *attr.split(".")]
    ok = sep and all(part.isidentifier() for part in parts)
    return None if ok else "module.path:attribute, each part an identifier"


def _host_name(value: str) -> bool:
    labels = value.rstrip(".").split(".")
    return len(value) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def _host(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    return None if _host_name(value) else "an IP address or a host name (letters, digits, - and .)"


def _host_port(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and not _host(host.removeprefix("[").removesuffix("]")):
        return None
    return None if not _host(value) else "a host name or IP address, with :PORT if need be"


def _url_path(value: str) -> str | None:
    if value.startswith("/") and not _UNSAFE_IN_PATH.search(value):
        return None
    return (
        "a URL path starting with / with no whitespace, quotes, backslashes or control characters"
    )


def _device(value: str) -> str | None:
    if _DEVICE.fullmatch(value):
        return None
    if value.startswith("/dev/") and _DEVICE_PATH_CHARS.fullmatch(value) and _clean_parts(value):
        return None
    return "a /dev/... path or char-NAME / block-NAME (letters, digits, . _ - + and * globs)"


def _url(value: str) -> str | None:
    if re.match(r"https?://[^/]", value) and not _UNSAFE_IN_URL.search(value):
        return None
    return "an http(s):// URL with no whitespace, quotes, backslashes or control characters"


def _token(value: str) -> str | None:
    return None if _TOKEN.fullmatch(value) else "letters, digits and . _ + - only"


def _drain_seconds(value: str) -> str | None:
    ok = value.isdigit() and 1 <= int(value) <= 86_400
    return None if ok else "whole seconds from 1 to 86400 (a day), e.g. 300"


def _nginx_path(value: str) -> str | None:
    # Rendered into nginx's `location = PATH`: nothing nginx would read as syntax.
    ok = re.fullmatch(r"/[A-Za-z0-9._~/-]*", value) is not None and _clean_parts(value)
    return None if ok else "a URL path of letters, digits and . _ ~ - / (e.g. /lb-health)"


def _tcp_port(value: str) -> str | None:
    ok = value.isdigit() and 1 <= int(value) <= 65_535
    return None if ok else "a TCP port from 1 to 65535"


def _wait_seconds(value: str) -> str | None:
    try:
        ok = 0 <= float(value) <= 3600
    except ValueError:
        ok = False
    return None if ok else "seconds from 0 to 3600, e.g. 12"


def _host_count(value: str) -> str | None:
    match = re.fullmatch(r"\s*(\d+)\s*(%?)\s*", value)
    ok = match and int(match.group(1)) >= 1 and (not match.group(2) or int(match.group(1)) <= 100)
    return None if ok else "a number of hosts (1 or more) or a percentage of the fleet (1% to 100%)"


def _http_status(value: str) -> str | None:
    ok = value.isdigit() and 100 <= int(value) <= 599
    return None if ok else "an HTTP status from 100 to 599, e.g. 200"


def _json_body(value: str) -> str | None:
    rule = "JSON text of at most 4096 characters with no control character, e.g. '{\"a\": 1}'"
    if len(value) > 4096 or re.search(r"[\x00-\x1f\x7f]", value):
        return rule
    try:
        json.loads(value)
    except ValueError:
        return rule
    return None


def _environment(value: Any) -> str | None:
    for key, item in dict(value).items():
        if not _VAR.fullmatch(str(key)):
            return (
                f"expected variable names (letters, digits and _, not first a digit), got {key!r}"
            )
        if re.search(r"[\x00-\x1f\x7f]", str(item)):
            return f"expected values with no line break or control character, {key}'s has one"
    return None


def _each(rule: Callable[[str], str | None]) -> Callable[[Any], str | None]:
    def check(values: Any) -> str | None:
        for item in values:
            why = rule(str(item))
            if why:
                return f"expected each item {why}, got {item!r}"
        return None

    return check


# A setting's rule: None when the value holds, else what it must be.
SCALAR_RULES: dict[str, Callable[[str], str | None]] = {
    "app_name": _name,
    "app_user": _user,
    "app_group": _name,
    "code_owner": _user,
    "build_user": _user,
    "app_root": _abs_path,
    "app_log_dir": _abs_path,
    "app_cache_dir": _abs_path,
    "uv_path": _abs_path,
    "bluegreen_upstream": _abs_path,
    "gpu_sysfs_pci": _abs_path,
    "app_module": _module,
    "app_host": _host,
    "models_metadata_host": _host_port,
    "health_path": _url_path,
    "ready_path": _url_path,
    "ready_body": _json_body,
    "ready_status": _http_status,
    "gpu_installer_url": _url,
    "models_gcs_url": _url,
    "uv_version": _token,
    "uv_python": lambda v: (
        None
        if _PATH_CHARS.fullmatch(v) and v
        else "a path, command or version of letters, digits and . _ - + @ , = : /"
    ),
    "gpu_driver_branch": _token,
    "drain_timeout_s": _drain_seconds,
    "lb_health_path": _nginx_path,
    "lb_health_port": _tcp_port,
    "lb_upstream_port": _tcp_port,
    "lb_drain_wait_s": _wait_seconds,
    "rollout_max_unavailable": _host_count,
}
COLLECTION_RULES: dict[str, Callable[[Any], str | None]] = {
    "unit_gpu_devices": _each(_device),
    "app_data_dirs": _each(_rel_path),
    "app_cache_env": _environment,
    "uv_env": _environment,
}


def rule_problem(name: str, value: Any) -> str | None:
    """Why VALUE (already of the right kind) breaks setting NAME's rule, or None."""
    if value is None:
        return None
    if name in COLLECTION_RULES:
        return COLLECTION_RULES[name](value)
    rule = SCALAR_RULES.get(name)
    if rule is None:
        return None
    why = rule(str(value))
    return f"expected {why}, got {str(value)!r}" if why else None
