"""Sizes on disk as people read them, for the reports of releases, status and cache."""

from __future__ import annotations


def human_size(n: int) -> str:
    """N bytes as "812 B", "4.0 KiB", "1.5 MiB", "2.0 GiB"."""
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"
