"""Which exceptions mean "the database is not there right now" (→ 503, retry later)."""

from __future__ import annotations

import sqlalchemy.exc
from asyncpg.exceptions import (
    CannotConnectNowError,
    ConnectionDoesNotExistError,
    InterfaceError,
    InternalClientError,
    PostgresConnectionError,
    QueryCanceledError,
)

_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, timed out (TimeoutError is an OSError: every deadline of app.db)
    sqlalchemy.exc.TimeoutError,  # no pool connection in time
    sqlalchemy.exc.InterfaceError,
    CannotConnectNowError,
    PostgresConnectionError,
    ConnectionDoesNotExistError,
    InterfaceError,
    InternalClientError,  # asyncpg: a connection broken in the middle of an operation
    QueryCanceledError,  # the server's statement_timeout: a database that does not answer in time
)

_UNAVAILABLE_MESSAGES = (
    "connection", "terminating", "shutting down", "starting up", "database is locked",
    "unable to open database", "the database system is",
)


def is_database_unavailable(exc: BaseException) -> bool:
    """True for failures of reaching the database, not for bugs in a query."""
    if isinstance(exc, _UNREACHABLE):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = exc.orig.__cause__ if exc.orig is not None else None
        if isinstance(exc.orig, _UNREACHABLE) or isinstance(cause, _UNREACHABLE):
            return True
        if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InternalError):
            text = str(exc.orig).lower()
            return any(message in text for message in _UNAVAILABLE_MESSAGES)
    return False


def describe(exc: BaseException) -> str:
    """A failure in plain words for logs: a deadline that passed says so (its own text is
    empty)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer within the deadline (database.statement_timeout / connect_timeout)"
    return str(exc) or type(exc).__name__
