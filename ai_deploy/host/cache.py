"""The service's persistent cache directory (Layout.cache_dir: app_cache_dir, by default
<app_root>/cache): the environment that points the service into it, which directories it may
be, and the shell that measures and empties it.

The hardened units run with `ProtectSystem=strict`, a private /tmp wiped at every restart and no
home of their own, so an AI library's default cache (~/.cache/huggingface, ~/.triton/cache,
/tmp/torchinductor_<user>) is either not writable or lost on restart. The service's HOME is
the cache directory, so every library's own default lands inside it; the usual variables are
set too (to the places the libraries would pick under that HOME), so one that reads only its
own variable agrees, and so does a .env that moves HOME elsewhere. `app_cache_env` adds
variables or overrides these; the app's .env wins over both (systemd reads EnvironmentFile=
after Environment=, for the service and for `ai-deploy exec` alike)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ai_deploy.host.paths import APP_TREE_NAMES, Layout

CACHE_DIR_TOKEN = "{cache_dir}"  # in an app_cache_env value: the cache directory's path
# Where each variable points, relative to the cache directory (the library's own default under
# HOME=<cache dir>, or under XDG_CACHE_HOME where it has no HOME default).
DEFAULT_ENV = (
    ("HOME", ""),
    ("XDG_CACHE_HOME", ".cache"),
    ("HF_HOME", ".cache/huggingface"),
    ("TORCH_HOME", ".cache/torch"),
    ("TORCHINDUCTOR_CACHE_DIR", ".cache/torchinductor"),
    ("TRITON_CACHE_DIR", ".triton/cache"),
    ("VLLM_CACHE_ROOT", ".cache/vllm"),
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH = re.compile(r"^/[A-Za-z0-9._+@/-]+$")
# Never a cache directory, nor anything under them: the system's own trees, /tmp (private to
# the service and wiped at every restart) and homes (ProtectHome= hides them).
_SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/snap",
    "/sys",
    "/tmp",
    "/usr",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/lib/systemd",
    "/var/log",
    "/var/tmp",
)


def cache_environment(layout: Layout, extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """The variables the service (and `exec`) get: DEFAULT_ENV under LAYOUT's cache directory,
    then EXTRA (app_cache_env) added or overriding, `{cache_dir}` in its values replaced."""
    base = layout.cache_dir
    env = {name: posixpath.join(base, sub) if sub else base for name, sub in DEFAULT_ENV}
    for name, value in (extra or {}).items():
        env[str(name)] = _text(value).replace(CACHE_DIR_TOKEN, base)
    return env


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def unit_environment(env: Mapping[str, str]) -> list[str]:
    """ENV as the values of `Environment=` lines, each quoted for a unit file ("NAME=value":
    backslash and double quote escaped, % doubled so systemd expands no specifier)."""
    lines = []
    for name, value in env.items():
        quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        lines.append(f'"{name}={quoted}"')
    return lines


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def cache_problems(
    layout: Layout, data_dirs: Iterable[str], extra: Mapping[str, object] | None = None
) -> list[str]:
    """A line per problem with the cache settings (app_cache_dir, app_cache_env) on LAYOUT's
    host, each naming the setting, the bad value and what to do; [] when they can be used.
    The cache directory is chowned to the service user and emptied by `ai-deploy cache
    clear`, so it must be a directory of its own."""
    problems = [*_dir_problems(layout, data_dirs)]
    for name, value in (extra or {}).items():
        if not _NAME.match(str(name)):
            problems.append(
                f"app_cache_env: {name!r} is not a variable name (letters, digits and _, "
                "not starting with a digit)"
            )
        elif any(c in _text(value) for c in "\n\r\0"):
            problems.append(f"app_cache_env: {name}: the value may not hold a line break or NUL")
    return problems


def _dir_problems(layout: Layout, data_dirs: Iterable[str]) -> list[str]:
    path = layout.cache_dir
    fix = (
        "set app_cache_dir to a directory of its own, e.g. /var/cache/<app_name>, or leave it unset"
    )
    if not _PATH.match(path) or posixpath.normpath(path) != path:
        return [
            f"app_cache_dir: {path!r} is not a plain absolute path (letters, digits, '._+@-' "
            f"and '/', no '..', no trailing '/'); {fix}"
        ]
    depth = len(path.strip("/").split("/"))
    if depth < 2 or (_inside(path, "/var") and depth < 3):
        return [f"app_cache_dir: {path!r} is a system-wide directory; {fix}"]
    for tree in _SYSTEM_TREES:
        if _inside(path, tree):
            return [
                f"app_cache_dir: {path!r} is under {tree}, which the service cannot keep; {fix}"
            ]
    root = layout.app_root.rstrip("/")
    if _inside(root, path):
        return [f"app_cache_dir: {path!r} holds app_root {root!r}; {fix}"]
    if _inside(path, root):
        first = path[len(root) + 1 :].split("/")[0]
        if first in APP_TREE_NAMES:
            return [f"app_cache_dir: {path!r} is inside the deploy's own {first!r}; {fix}"]
    owned = [*(posixpath.join(root, d) for d in data_dirs), layout.log_dir]
    for other in owned:
        if _inside(path, other) or _inside(other, path):
            return [f"app_cache_dir: {path!r} overlaps {other!r} (a data or log directory); {fix}"]
    return []


@dataclass(frozen=True)
class CacheState:
    """The cache directory as found on a host."""

    path: str
    present: bool
    size_bytes: int = 0  # disk usage (du), the directory itself included
    owner: str = ""
    group: str = ""
    mode: str = ""  # octal, as stat prints it ("700")

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "present": self.present,
            "size_bytes": self.size_bytes,
            "owner": self.owner,
            "group": self.group,
            "mode": self.mode,
        }


def state_script(layout: Layout) -> str:
    """Shell printing `CACHE <bytes> <owner> <group> <mode>`, or CACHE-ABSENT when the
    directory is missing (or is a link)."""
    c = layout.cache
    return (
        f"if [ -d {c} ] && [ ! -L {c} ]; then\n"
        f"  echo \"CACHE $(du -s -B1 -x -- {c} | cut -f1) $(stat -c '%U %G %a' -- {c})\"\n"
        "else echo CACHE-ABSENT; fi\n"
    )


def parse_state(layout: Layout, stdout: list[str]) -> CacheState:
    for line in stdout:
        parts = line.split()
        if parts[:1] == ["CACHE"] and len(parts) == 5 and parts[1].isdigit():
            return CacheState(layout.cache_dir, True, int(parts[1]), *parts[2:5])
    return CacheState(layout.cache_dir, False)


@dataclass(frozen=True)
class Cleared:
    """What `clear_script` removed: each entry (a path relative to the cache directory, two
    levels deep at most) with its disk usage, and what it could not remove."""

    present: bool
    removed: list[tuple[str, int]]
    freed_bytes: int
    left: int  # entries still in the directory afterwards (a mount point, ...)
    errors: list[str]  # what rm said about them


def clear_script(layout: Layout) -> str:
    """Shell (as root) that empties the cache directory, keeping the directory itself (owner and
    mode as the deploy made them): first `ENTRY <bytes> <path>` for everything two levels deep
    (`du -a`), then each entry removed with `rm -rf --one-file-system` (which never follows a
    link: a link in the cache is removed, never what it points to), then `LEFT <count>` and
    `AFTER <bytes>`. A missing directory, or one that is a link, is left alone: CACHE-ABSENT."""
    c = layout.cache
    return f"""
if [ -L {c} ] || [ ! -d {c} ]; then echo CACHE-ABSENT; exit 0; fi
du -a -B1 -x -d 2 -- {c} | while IFS="$(printf '\\t')" read -r size path; do
  echo "ENTRY $size $path"
done
find {c} -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {{}} + 2>&1 | sed 's/^/ERROR /'
echo "LEFT $(find {c} -mindepth 1 -maxdepth 1 | wc -l)"
echo "AFTER $(du -s -B1 -x -- {c} | cut -f1)"
"""


def parse_cleared(layout: Layout, stdout: list[str]) -> Cleared:
    """clear_script's output: the entries two levels deep (and files or empty directories one
    level deep), largest first; the bytes freed (before minus after)."""
    if "CACHE-ABSENT" in stdout:
        return Cleared(False, [], 0, 0, [])
    base = layout.cache_dir.rstrip("/")
    sizes: dict[str, int] = {}
    left = after = 0
    errors: list[str] = []
    for line in stdout:
        word, _, rest = line.partition(" ")
        if word == "ENTRY":
            size, _, path = rest.partition(" ")
            rel = path[len(base) + 1 :] if path.startswith(base + "/") else ""
            sizes[rel] = int(size) if size.isdigit() else 0
        elif word == "ERROR":
            errors.append(rest)
        elif word == "LEFT" and rest.strip().isdigit():
            left = int(rest)
        elif word == "AFTER" and rest.strip().isdigit():
            after = int(rest)
    total = sizes.pop("", 0)
    parents = {rel.split("/")[0] for rel in sizes if "/" in rel}
    removed = [(rel, n) for rel, n in sizes.items() if "/" in rel or rel not in parents]
    removed.sort(key=lambda item: (-item[1], item[0]))
    return Cleared(True, removed, max(total - after, 0), left, errors)
