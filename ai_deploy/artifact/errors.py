"""The one error every artifact step raises (building, the git listing, the lock check)."""

from __future__ import annotations


class ArtifactError(Exception):
    """The source tree, the requested id or the artifact file is unusable; the message says
    which path or value and what to do."""
