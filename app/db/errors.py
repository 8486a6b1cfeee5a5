"""Which exceptions mean "the database is not there right now"."""

from __future__ import annotations

import sqlalchemy.exc

try:  # asyncpg may raise its own errors while the server restarts
    from asyncpg.exceptions import CannotConnectNowError, PostgresConnectionError
    _ASYNCPG_ERRORS: tuple[type[BaseException], ...] = (CannotConnectNowError, PostgresConnectionError)
except ImportError:  # pragma: no cover - asyncpg is a dependency
    _ASYNCPG_ERRORS = ()

_UNAVAILABLE_MESSAGES = (
    "connection", "terminat", "shutting down", "starting up", "database is locked",
    "unable to open database", "the database system is",
)


def is_database_unavailable(exc: BaseException) -> bool:
    """True for failures of reaching the database, not for bugs in a query."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError | OSError | _ASYNCPG_ERRORS):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(exc.orig, OSError | _ASYNCPG_ERRORS):
            return True
        if isinstance(exc, sqlalchemy.exc.OperationalError):
            text = str(exc.orig).lower()
            return any(message in text for message in _UNAVAILABLE_MESSAGES)
    return False
