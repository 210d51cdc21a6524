"""Old releases and unused venvs removed: the newest `releases_keep` stay, and current and
previous always do, with every venv a kept release links to (and the healthy records of the
releases that are kept), and every model file a kept release uses (its .ai-deploy-models.json
says which; an older release's shared models/<name>/<version> directory stays while its
models/<name> link names it); partial downloads of files no kept release uses, and anything
else in the blob store that is not a kept file (a directory included), go too."""

from __future__ import annotations

from ai_deploy.host.paths import MODEL_BLOBS, MODEL_PARTIALS, MODEL_STORE
from ai_deploy.host.release.models import RECORD
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
s=../{MODEL_STORE}; b=$s/{MODEL_BLOBS}
[ -d "$s" ] || exit 0
blobs=$(cat ./*/{RECORD} 2>/dev/null | grep -o '"sha256": "[0-9a-f]*"' | cut -d'"' -f4 | sort -u)
versions=$(for l in ./*/models/*; do
  [ -L "$l" ] && t=$(readlink "$l") && echo "${{t#../../../{MODEL_STORE}/}}"
done | sort -u)
for f in "$b"/* "$s"/{MODEL_PARTIALS}/*; do
  [ -e "$f" ] || [ -L "$f" ] || continue
  n=${{f##*/}}; sha=${{n%%.*}}
  echo "$blobs" | grep -qx "$sha" && continue
  case "$f" in "$b"/*) echo "$versions" | grep -qx "{MODEL_BLOBS}/$n" && continue ;; esac
  rm -rf -- "$f"
  case "$n" in *.*) ;; *) echo "removed model file $n" ;; esac
done
for d in "$s"/*/*/; do
  v=${{d#"$s"/}}; v=${{v%/}}; case "$v" in {MODEL_BLOBS}/*|.*) continue ;; esac
  echo "$versions" | grep -qx "$v" || {{ rm -rf -- "$d" && echo "removed model version $v"; }}
done
for d in "$s"/*/; do [ "$d" = "$b/" ] || rmdir "$d" 2>/dev/null || true; done
"""
    for line in remote.run(script).stdout:
        remote.say(line)
