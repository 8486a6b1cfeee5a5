"""Human-readable figures shared by the CLI and the dashboard, and client values as errors echo them."""

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


#: Characters of a client's own value that an error answer echoes back.
ECHO_LIMIT = 256


def clipped(text: str, limit: int = ECHO_LIMIT) -> str:
    """A value a client sent, as an error answer or a log line echoes it: whole when short,
    else its start and ``…`` (a 900 KB container id need not come back whole)."""
    return text if len(text) <= limit else text[:limit] + "…"


def error_text(exc: BaseException) -> str:
    """``TypeName: message``, never empty: many exceptions (an ``assert``, a bare
    ``ConnectionResetError()``) carry no message, and a reason must still say what happened.
    An ``OSError`` without a message names its errno. Only the first line of a message: a
    driver's text may go on with the statement and its parameters."""
    message = next(iter(str(exc).strip().splitlines()), "")
    if not message and isinstance(exc, OSError) and exc.errno is not None:
        message = f"[Errno {exc.errno}] {exc.strerror or ''}".strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
