"""revisions.log: one line per deploy, rollback and lock release (see paths.revisions_line)."""

from __future__ import annotations

import shlex

from ai_deploy.host.paths import revisions_line
from ai_deploy.host.release.lock import now_iso
from ai_deploy.host.remote import Remote
from ai_deploy.host.settings import Spec


def record(remote: Remote, spec: Spec, outcome: str, detail: str = "") -> None:
    line = revisions_line(now_iso(), spec.action, spec.release_id, outcome, spec.who, detail)
    remote.run(f"printf '%s\\n' {shlex.quote(line)} >> {spec.layout.revisions}")
