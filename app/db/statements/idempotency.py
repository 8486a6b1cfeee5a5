"""Idempotency keys of submits (SPEC §8, ``app.jobs.idempotency``) and their pruning
(``app.maintenance.pruner``).

A key is claimed by the INSERT of its row in the transaction that stores the request's
jobs: on PostgreSQL a concurrent duplicate's INSERT waits for that transaction's end and
then conflicts (or goes ahead if it rolled back); SQLite has one writer. An expired key's
row is taken over by the same INSERT. Parameters are named after what they hold, never
after a column (SQLAlchemy reserves column names in VALUES and SET clauses).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, any_, bindparam, delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.db.direct import PerDialect, Statement
from app.db.models import IdempotencyKey, JsonType, UtcDateTime

_NOW = bindparam("now", type_=UtcDateTime())
_KEY = (IdempotencyKey.client == bindparam("owner"), IdempotencyKey.key == bindparam("idem_key"))
_ROW = {
    "client": bindparam("owner"),
    "key": bindparam("idem_key"),
    "request_hash": bindparam("fingerprint"),
    "answer": bindparam("stored", type_=JsonType),
    "created_at": _NOW,
    "expires_at": bindparam("until", type_=UtcDateTime()),
}


def _claim(insert: Any) -> Statement:
    statement = insert(IdempotencyKey).values(**_ROW)
    excluded = statement.excluded
    return Statement(
        statement.on_conflict_do_update(
            index_elements=[IdempotencyKey.client, IdempotencyKey.key],
            set_={name: excluded[name] for name in ("request_hash", "answer", "created_at", "expires_at")},
            where=IdempotencyKey.expires_at <= _NOW,
        ).returning(IdempotencyKey.key)
    )


#: Store the key with its request's fingerprint and answer, unless it is held and not
#: expired (an expired one is taken over): answers the key when stored, nothing when the
#: key is someone else's request. Parameters: ``owner``, ``idem_key``, ``fingerprint``,
#: ``stored`` (the answer: a batch's list as a tuple, since a list parameter is the list of
#: an ``IN``), ``now``, ``until``.
CLAIM_KEY = PerDialect(postgresql=_claim(pg_insert), sqlite=_claim(sqlite_insert))
#: The fingerprint and answer of an unexpired key. Parameters: ``owner``, ``idem_key``, ``now``.
READ_KEY = Statement(
    select(IdempotencyKey.request_hash, IdempotencyKey.answer).where(*_KEY, IdempotencyKey.expires_at > _NOW)
)
_EXPIRED = IdempotencyKey.expires_at <= _NOW
_BATCH = bindparam("batch", type_=Integer)
#: Delete one batch of expired keys, oldest first, found through
#: ``ix_idempotency_keys_expires_at``, each row then by its address (``ctid``, ``rowid``):
#: PostgreSQL's generic plan of ``(client, key) IN (batch)`` hash-joins the whole table.
#: Parameters: ``now``, ``batch``.
PRUNE_KEYS = PerDialect(
    postgresql=Statement(
        delete(IdempotencyKey).where(
            literal_column("ctid")
            == any_(
                func.array(
                    select(literal_column("ctid"))
                    .select_from(IdempotencyKey)
                    .where(_EXPIRED)
                    .order_by(IdempotencyKey.expires_at)
                    .limit(_BATCH)
                    .scalar_subquery()
                )
            )
        )
    ),
    sqlite=Statement(
        delete(IdempotencyKey).where(
            literal_column("rowid").in_(
                select(literal_column("rowid"))
                .select_from(IdempotencyKey)
                .where(_EXPIRED)
                .order_by(IdempotencyKey.expires_at)
                .limit(_BATCH)
                .scalar_subquery()
            )
        )
    ),
)
