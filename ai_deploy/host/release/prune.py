"""Old releases and unused venvs removed: the newest `releases_keep` stay, and current and
previous always do, with every venv a kept release links to (and the healthy records of the
releases that are kept)."""

from __future__ import annotations

from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec


def prune(remote: Remote, spec: Spec) -> None:
    root = spec.layout.root
    script = f"""
cd {root}/releases || exit 0
cur=$(readlink ../current); cur=${{cur##*/}}; prev=$(readlink ../previous); prev=${{prev##*/}}
rm -rf ./.tmp-*
n=0
for id in $(ls -1t); do
  n=$((n+1))
  if [ "$n" -gt {int(spec.keep)} ] && [ "$id" != "$cur" ] && [ "$id" != "$prev" ]; then
    rm -rf -- "$id" && echo "removed release $id"
  fi
done
used=$(for id in $(ls -1); do v=$(readlink "$id/.venv"); echo "${{v##*/}}"; done)
for v in $(ls -1 ../venvs 2>/dev/null); do
  echo "$used" | grep -qx "$v" || {{ rm -rf -- "../venvs/$v" && echo "removed venv $v"; }}
done
for h in $(ls -1 ../healthy 2>/dev/null); do [ -d "$h" ] || rm -f -- "../healthy/$h"; done
"""
    for line in remote.run(script).stdout:
        remote.say(line)
