"""pyinfra facts about the app's tree on a host: releases, venvs, links, lock, service state."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from ai_deploy.host.paths import ARTIFACT_SHA256, LB_FRONT_MARK, LOCK_DIR, Layout
from ai_deploy.host.release.venv import venv_lines
from ai_deploy.host.remote import Remote

MARK = "AI-DEPLOY-TREE"


@dataclass
class AppTree:
    """What a host has under app_root (an empty tree on a fresh host)."""

    current: str | None = None  # release id `current` points at
    previous: str | None = None
    releases: list[str] = field(default_factory=list)  # complete releases, newest first
    venvs: list[str] = field(default_factory=list)  # complete venvs (lock hashes)
    damaged_venvs: list[str] = field(default_factory=list)  # complete, files differ from manifest
    release_venvs: dict[str, str] = field(default_factory=dict)  # release -> lock hash
    release_sha256: dict[str, str] = field(default_factory=dict)  # release -> artifact sha256
    healthy: dict[str, str] = field(default_factory=dict)  # passed the gate -> artifact sha256
    lock: dict[str, object] | None = None
    lock_raw: str | None = None  # lock directory present but its info unreadable
    units: dict[str, str] = field(default_factory=dict)  # unit -> `systemctl is-active`
    live: str | None = None  # blue/green: the colour nginx sends traffic to
    nginx_site: bool = False  # blue/green: our site is enabled in nginx
    lb_front: bool = False  # socket / restart with lb_drain: that site is nginx's lb front

    def is_healthy(self, release: str) -> bool:
        """RELEASE passed the health gate (and was not replaced by other bytes since)."""
        recorded = self.healthy.get(release)
        if recorded is None:
            return False
        sha = self.release_sha256.get(release)
        return recorded in ("-", sha) or sha is None

    def venv_ready(self, release: str) -> bool:
        return self.release_venvs.get(release) in self.venvs

    def active_units(self) -> set[str]:
        return {unit for unit, state in self.units.items() if state == "active"}


def tree_script(app_root: str, service: str) -> str:
    """Shell that prints one tagged line per item of the tree (read-only)."""
    layout = Layout(app_root, service.removesuffix(".service"), "")
    r = layout.root
    units = " ".join(shlex.quote(u) for u in layout.related_units())
    return f"""
echo {MARK}
cur=$(readlink {r}/current 2>/dev/null) && echo "current ${{cur##*/}}"
prev=$(readlink {r}/previous 2>/dev/null) && echo "previous ${{prev##*/}}"
if [ -d {r}/releases ]; then
  ls -1t {r}/releases | while read -r id; do
    case "$id" in .*) continue ;; esac
    v=$(readlink {r}/releases/"$id"/.venv 2>/dev/null) || v=
    s=$(cat {r}/releases/"$id"/{ARTIFACT_SHA256} 2>/dev/null) || s=
    echo "release $id ${{v##*/}}"
    [ -n "$s" ] && echo "release_sha256 $id $s"
  done
fi
{venv_lines(f"{r}/venvs")}
if [ -d {r}/healthy ]; then
  for h in {r}/healthy/*; do [ -f "$h" ] && echo "healthy ${{h##*/}} $(cut -d' ' -f1 "$h")"; done
fi
if [ -d {r}/{LOCK_DIR} ]; then
  echo "lock $(cat {r}/{LOCK_DIR}/info 2>/dev/null | tr -d '\\n')"
fi
for u in {units}; do echo "unit $u $(systemctl is-active "$u" 2>/dev/null || true)"; done
[ -f {r}/colors/LIVE ] && echo "live $(cat {r}/colors/LIVE)"
[ -e {shlex.quote(layout.nginx_site)} ] && echo "nginx_site yes"
grep -qs {shlex.quote("^" + LB_FRONT_MARK)} {shlex.quote(layout.nginx_site)} && echo "lb_front yes"
true
"""


def parse_tree(lines: list[str]) -> AppTree:
    tree = AppTree()
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "current":
            tree.current = rest.strip() or None
        elif kind == "previous":
            tree.previous = rest.strip() or None
        elif kind == "release":
            parts = rest.split()
            if parts:
                tree.releases.append(parts[0])
                if len(parts) > 1:
                    tree.release_venvs[parts[0]] = parts[1]
        elif kind in ("release_sha256", "healthy"):
            name, _, sha = rest.partition(" ")
            if name:
                getattr(tree, kind)[name] = sha.strip()
        elif kind == "venv":
            tree.venvs.append(rest.strip())
        elif kind == "venv_damaged":
            tree.damaged_venvs.append(rest.strip())
        elif kind == "lock":
            try:
                tree.lock = json.loads(rest)
            except ValueError:
                tree.lock_raw = rest
        elif kind == "unit":
            unit, _, state = rest.partition(" ")
            tree.units[unit] = state.strip() or "unknown"
        elif kind == "live":
            tree.live = rest.strip() or None
        elif kind == "nginx_site":
            tree.nginx_site = True
        elif kind == "lb_front":
            tree.lb_front = True
    return tree


class AppTreeFact(FactBase[AppTree]):
    """The app tree under APP_ROOT and the state of SERVICE (see AppTree)."""

    def command(self, app_root: str, service: str) -> str:  # type: ignore[override]
        return tree_script(app_root, service)

    def process(self, output: list[str]) -> AppTree:  # type: ignore[override]
        lines = [str(line) for line in output]
        if MARK in lines:
            lines = lines[lines.index(MARK) + 1 :]
        return parse_tree(lines)


def read_tree(remote: Remote, layout: Layout) -> AppTree:
    """The app tree read through REMOTE (the same script as the fact)."""
    out = remote.run(tree_script(layout.app_root, layout.service)).stdout
    return parse_tree(out[out.index(MARK) + 1 :] if MARK in out else out)


class UserCanSudo(FactBase[bool]):
    """Whether USER may run commands through sudo (as root reads it: `sudo -l -U USER`)."""

    def command(self, user: str) -> str:  # type: ignore[override]
        q = shlex.quote(user)
        return (
            f"if id -u {q} >/dev/null 2>&1 && sudo -n -l -U {q} 2>/dev/null "
            "| grep -q 'may run the following'; then echo yes; else echo no; fi"
        )

    def process(self, output: list[str]) -> bool:  # type: ignore[override]
        return bool(output) and str(output[-1]).strip() == "yes"
