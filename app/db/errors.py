"""Which exceptions mean "the database is not there right now" (→ 503, retry later)."""

from __future__ import annotations

import sqlalchemy.exc
from asyncpg.exceptions import (
    CannotConnectNowError,
    ConnectionDoesNotExistError,
    InterfaceError,
    InternalClientError,
    InvalidAuthorizationSpecificationError,
    InvalidCatalogNameError,
    PostgresConnectionError,
)

_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, timed out (TimeoutError is an OSError)
    sqlalchemy.exc.TimeoutError,  # no pool connection in time
    sqlalchemy.exc.InterfaceError,
    CannotConnectNowError,
    PostgresConnectionError,
    ConnectionDoesNotExistError,
    InterfaceError,
    InternalClientError,  # asyncpg: a connection broken in the middle of an operation
    # The server refused the connection: wrong password, unknown role (both 28xxx), no
    # such database (3D000). Nothing a query did; the node cannot reach its data.
    InvalidAuthorizationSpecificationError,
    InvalidCatalogNameError,
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


def unavailable_reason(exc: BaseException) -> str:
    """One line for an operator: the driver's own exception (not SQLAlchemy's wrapper,
    whose text carries the statement and a link), as ``Type: first line of its message``."""
    root: BaseException = exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        root = exc.orig.__cause__ or exc.orig  # asyncpg's error behind SQLAlchemy's adapter
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__
