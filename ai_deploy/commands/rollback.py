"""`ai-deploy rollback [RELEASE]`: the previous (or named) release back in service, behind the
same health gate as a deploy."""

from __future__ import annotations

from ai_deploy.inventory import run_pyinfra


def rollback(inventory: str | None, release: str | None) -> int:
    return run_pyinfra(inventory, {"rollback": release or "previous"})
