"""Which exceptions mean "the database is not there right now" (→ 503, retry later)."""

from __future__ import annotations

import sqlalchemy.exc
from asyncpg.exceptions import (
    CannotConnectNowError,
    ConnectionDoesNotExistError,
    DataError,
    InterfaceError,
    InternalClientError,
    InvalidAuthorizationSpecificationError,
    InvalidCatalogNameError,
    PostgresConnectionError,
    QueryCanceledError,
)

from app.formatting import error_text

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
    # The server refused the connection: wrong password, unknown role (both 28xxx), no
    # such database (3D000). Nothing a query did; the node cannot reach its data.
    InvalidAuthorizationSpecificationError,
    InvalidCatalogNameError,
)

_UNAVAILABLE_MESSAGES = (
    "connection",
    "terminating",
    "shutting down",
    "starting up",
    "database is locked",
    "unable to open database",
    "the database system is",
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


def refused_value(exc: BaseException) -> str | None:
    """Why the database refused a value the statement carried (PostgreSQL's data
    exceptions, SQLSTATE class 22, such as a NUL in JSONB), or its encoding failed
    (``RecursionError``: nested too deeply); None for anything else, which is a lost
    database or a bug, not bad data. Whatever direct path or SQLAlchemy took the statement."""
    cause: BaseException | None = exc
    if isinstance(exc, sqlalchemy.exc.StatementError):  # a DBAPIError, or a value its binding refused
        cause = exc.orig.__cause__ or exc.orig if exc.orig is not None else None
    if isinstance(cause, RecursionError):
        return "nested too deeply to encode"
    if isinstance(cause, DataError) or isinstance(exc, sqlalchemy.exc.DataError):
        return short_message(cause or exc)
    return None


def short_message(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text, for an error stored or answered. Never
    raises: the text of SQLAlchemy's errors shows the statement's parameters, and those
    of a deeply nested value cannot even be shown (``RecursionError`` in ``repr``)."""
    try:
        lines = str(exc).strip().splitlines()
    except Exception:
        lines = []
    return lines[0][:limit] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """A failure in plain words for logs: a deadline that passed says so (its own text is
    empty)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer within the deadline (database.statement_timeout / connect_timeout)"
    return unavailable_reason(exc)


def unavailable_reason(exc: BaseException) -> str:
    """One line for an operator: the driver's own exception (not SQLAlchemy's wrapper,
    whose text carries the statement and a link), as ``Type: first line of its message``."""
    root: BaseException = exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        root = exc.orig.__cause__ or exc.orig  # asyncpg's error behind SQLAlchemy's adapter
    return error_text(root)
