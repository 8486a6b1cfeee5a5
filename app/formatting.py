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


def error_text(exc: BaseException) -> str:
    """``TypeName: message``, never empty: many exceptions (an ``assert``, a bare
    ``ConnectionResetError()``) carry no message, and a reason must still say what happened.
    An ``OSError`` without a message names its errno."""
    message = str(exc).strip()
    if not message and isinstance(exc, OSError) and exc.errno is not None:
        message = f"[Errno {exc.errno}] {exc.strerror or ''}".strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
