"""Paths inside this repository that the tasks read (templates), whatever the working dir."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def template(name: str) -> str:
    return str(REPO / "templates" / name)
