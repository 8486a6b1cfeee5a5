"""Conditions on a job's status, written so that PostgreSQL's partial indexes serve them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam
from sqlalchemy.sql.elements import ColumnElement

from app.db.models import Job


def status_in(statuses: Sequence[str]) -> ColumnElement[bool]:
    """Statuses rendered as literals, so that PostgreSQL can match partial-index predicates
    even in prepared (generic) plans."""
    return Job.status.in_(bindparam(None, list(statuses), expanding=True, literal_execute=True))


def status_is(status: str) -> ColumnElement[bool]:
    return Job.status == bindparam(None, status, literal_execute=True)
