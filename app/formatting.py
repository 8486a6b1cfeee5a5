"""Human-readable figures shared by the CLI and the dashboard."""

from __future__ import annotations


def duration(seconds: float | None, missing: str = "-") -> str:
    """``412 ms``, ``3.2 s``, ``4.5 min``, ``2.1 h``."""
    if seconds is None:
        return missing
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
