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


def status_checked(status: str) -> ColumnElement[bool]:
    """A status checked on rows found otherwise (by id), as a bound parameter: no partial
    index of that status can serve it, so PostgreSQL's generic plan reads the rows by
    their ids instead of every job in that status. With ``status_is``, the step commit's
    generic plan read all running jobs of all nodes through ``ix_jobs_lease`` (its
    statistics: a few running jobs) and joined them to the steps by hash; the writes to
    the jobs a node holds (``claims.owned_claims``, the renewal's) check it this way too."""
    return Job.status == bindparam(None, status)
