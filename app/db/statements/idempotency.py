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

from sqlalchemy import Integer, Text, and_, any_, bindparam, cast, column, delete, func, literal_column, select, true
from sqlalchemy.dialects.postgresql import JSONB
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


def _unless_held(statement: Any, *returning: Any) -> Statement:
    """An INSERT of keys that takes a key over only when it has expired; answers ``returning``
    of the keys it stored."""
    excluded = statement.excluded
    return Statement(
        statement.on_conflict_do_update(
            index_elements=[IdempotencyKey.client, IdempotencyKey.key],
            set_={name: excluded[name] for name in ("request_hash", "answer", "created_at", "expires_at")},
            where=IdempotencyKey.expires_at <= _NOW,
        ).returning(*returning)
    )


def _claim(insert: Any) -> Statement:
    return _unless_held(insert(IdempotencyKey).values(**_ROW), IdempotencyKey.key)


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

#: The keys of a group commit (``app.jobs.idempotency.claim_keys``): one parameter, a JSON
#: array of ``{"owner", "idem_key", "fingerprint", "stored"}``, read as rows by each
#: database's own function (any number of keys: one statement, one plan).
_KEYS = bindparam("keys", type_=Text)
_FIELDS = ("owner", "idem_key", "fingerprint", "stored")


def _pg_keys() -> dict[str, Any]:
    entries = (
        func.jsonb_to_recordset(cast(_KEYS, JSONB))
        .table_valued(*(column(name, JSONB if name == "stored" else Text) for name in _FIELDS))
        .render_derived(name="entry", with_types=True)
    )
    return {name: entries.c[name] for name in _FIELDS}


def _sqlite_keys() -> dict[str, Any]:
    entries = func.json_each(_KEYS).table_valued("value").alias("entry")
    return {name: func.json_extract(entries.c.value, f"$.{name}") for name in _FIELDS}


def _claim_many(insert: Any, fields: dict[str, Any]) -> Statement:
    # SQLite parses ``ON CONFLICT`` after a SELECT's FROM as a join's unless a WHERE comes first.
    rows = select(*fields.values(), _NOW, bindparam("until", type_=UtcDateTime())).where(true())
    statement = insert(IdempotencyKey).from_select(
        ["client", "key", "request_hash", "answer", "created_at", "expires_at"], rows
    )
    return _unless_held(statement, IdempotencyKey.client, IdempotencyKey.key)


def _wanted(fields: dict[str, Any]) -> Any:
    return select(fields["owner"].label("owner"), fields["idem_key"].label("idem_key")).subquery("wanted")


def _pg_read_many() -> Statement:
    """Each key looked up in the primary key by itself (a LATERAL with a LIMIT is never
    made a join): planned as a join, the ~100 rows PostgreSQL guesses for any
    ``jsonb_to_recordset`` made a hash join over every key stored the cheaper plan while
    the table held a few thousand keys (0.7 ms a replay, against 0.07 for ``READ_KEY``)."""
    wanted = _wanted(_pg_keys())
    held = (
        select(IdempotencyKey.client, IdempotencyKey.key, IdempotencyKey.request_hash, IdempotencyKey.answer)
        .where(
            IdempotencyKey.client == wanted.c.owner,
            IdempotencyKey.key == wanted.c.idem_key,
            IdempotencyKey.expires_at > _NOW,
        )
        .limit(literal_column("1"))
        .lateral("held")
    )
    return Statement(select(*held.c).select_from(wanted).join(held, true()))


def _sqlite_read_many() -> Statement:
    """SQLite (no LATERAL) plans the join as a lookup in the primary key per key."""
    wanted = _wanted(_sqlite_keys())
    return Statement(
        select(IdempotencyKey.client, IdempotencyKey.key, IdempotencyKey.request_hash, IdempotencyKey.answer)
        .select_from(wanted)
        .join(IdempotencyKey, and_(IdempotencyKey.client == wanted.c.owner, IdempotencyKey.key == wanted.c.idem_key))
        .where(IdempotencyKey.expires_at > _NOW)
    )


#: ``CLAIM_KEY`` for many distinct keys in one statement, in the order given (concurrent
#: group commits that lock keys in one order cannot deadlock): answers the ``(client,
#: key)`` of each key stored. Parameters: ``keys`` (JSON text, above), ``now``, ``until``.
CLAIM_KEYS = PerDialect(
    postgresql=_claim_many(pg_insert, _pg_keys()), sqlite=_claim_many(sqlite_insert, _sqlite_keys())
)
#: ``READ_KEY`` for many keys: ``(client, key, fingerprint, answer)`` of each unexpired
#: one. Parameters: ``keys`` (only ``owner`` and ``idem_key`` are read), ``now``.
READ_KEYS = PerDialect(postgresql=_pg_read_many(), sqlite=_sqlite_read_many())
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
