"""What the host remembers of each change: a revisions.log line per deploy, rollback and restart
(written by ai_deploy.host.revisions.append_revision), and healthy/<release id> for each release
that passed the health gate, holding the sha256 of the artifact it came from."""

from __future__ import annotations

import shlex

from ai_deploy.host.paths import ARTIFACT_SHA256
from ai_deploy.host.release.lock import now_iso
from ai_deploy.host.remote import Remote
from ai_deploy.host.revisions import append_revision
from ai_deploy.host.settings import Spec


def record(remote: Remote, spec: Spec, outcome: str, detail: str = "") -> None:
    """This run's revisions.log line: SPEC's action and release, OUTCOME and DETAIL."""
    append_revision(remote, spec.layout, spec.action, spec.release_id, outcome, spec.who, detail)


def mark_healthy(remote: Remote, spec: Spec) -> None:
    """Record that SPEC.release_id passed the gate (written aside, then renamed into place)."""
    layout = spec.layout
    rid = shlex.quote(spec.release_id)
    sha = f"$(cat {layout.release(spec.release_id)}/{ARTIFACT_SHA256} 2>/dev/null || echo -)"
    remote.run(
        f"mkdir -p {layout.healthy} && printf '%s %s\\n' \"{sha}\" {shlex.quote(now_iso())} "
        f"> {layout.healthy}/.{rid}.tmp && mv -f {layout.healthy}/.{rid}.tmp {layout.healthy}/{rid}"
    )
