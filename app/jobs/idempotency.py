"""Submits with an ``Idempotency-Key`` (SPEC §8): the same request again is answered as
the first time and stores nothing; another request under the same key is a 409.

The key is kept in SQL, per client, so every node sharing the database honours it and a
restart forgets none. It is claimed by the INSERT of its row (``CLAIM_KEY``), in the one
transaction that stores the request's jobs and subscriptions: exactly one of concurrent
duplicates commits, on any nodes (PostgreSQL: the second INSERT waits for the first's
transaction and then conflicts, or goes ahead if it rolled back; SQLite has one writer).
The loser rolls back and answers the stored answer. Answers that are errors (a single
submit's 4xx, a 503) are not kept: the client may fix the request and retry with its key.

A keyed submit skips the group commit and the claim in its INSERT (``app.jobs.handoff``):
it has a statement of its own anyway, and the claim loop is woken after the commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from app import metrics
from app.clock import utcnow
from app.db.errors import is_database_unavailable, refused_value
from app.db.statements.idempotency import CLAIM_KEY, READ_KEY
from app.db.statements.submits import INSERT_JOBS
from app.db.statements.subscriptions import INSERT_SUBSCRIPTIONS
from app.errors import IDEMPOTENCY_KEY_REUSED
from app.jobs.requests import JobRejected, JobRequest
from app.jobs.rows import refused_answer

if TYPE_CHECKING:
    from app.db.direct import Row
    from app.jobs.service import Accepted, JobService

Answer = dict[str, Any]
#: Tries of a keyed submit whose key went away between its INSERT and its read (pruned):
#: the next try takes the key.
_TRIES = 3


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's key and the fingerprint of the request it came with."""

    key: str
    #: sha256 (hex) of the endpoint's name and the raw body: the same bytes, the same request.
    fingerprint: str

    @classmethod
    def of(cls, key: str, endpoint: str, body: bytes) -> IdempotencyKey:
        return cls(key, hashlib.sha256(endpoint.encode() + b"\n" + body).hexdigest())


@dataclass(frozen=True, slots=True)
class Submitted:
    """A keyed submit's answers, and whether they are an earlier request's (a replay)."""

    answers: list[Answer]
    replayed: bool = False


class _KeyHeld(Exception):
    """Rolls the transaction back: the key is another commit's (its row, or None if it
    went meanwhile)."""

    def __init__(self, row: Row | None) -> None:
        super().__init__("idempotency key held")
        self.row = row


class _Rejected(Exception):
    """Rolls the transaction back: a single submit that is refused keeps no key."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("rejected")
        self.answer = answer


class _Probe(Exception):
    """Rolls a probe's transaction back: the row was storable."""


async def submit_keyed(
    service: JobService,
    client: str,
    requests: Sequence[JobRequest | JobRejected],
    key: IdempotencyKey,
    single: bool,
    ttl: timedelta,
) -> Submitted:
    """``requests`` under ``key``: ``single`` for ``POST /api/jobs`` (its answer is the
    request's ``{"id"}`` or error), else a batch (its answer, the list, is kept whatever
    its items' answers). Raises the 409 ``Idempotency key reused`` for another request."""
    refused: dict[int, Answer] = {}  # item → the database's refusal of its row
    for _ in range(_TRIES):
        now = utcnow()
        try:
            return await _submit_once(service, client, requests, key, single, now, now + ttl, refused)
        except _KeyHeld as held:
            if held.row is not None:
                return _replay(key, held.row)
        except _Rejected as rejected:
            return await _rejected(service, client, key, now, rejected.answer)
        except Exception as exc:
            if is_database_unavailable(exc) or refused_value(exc) is None or refused:
                raise
            refused = await _refusals(service, client, requests, now)
            if not refused:  # each row stores alone: the failure was not about the data
                raise
    raise RuntimeError("an idempotency key kept going away")  # pruned three times in a row


async def _submit_once(
    service: JobService,
    client: str,
    requests: Sequence[JobRequest | JobRejected],
    key: IdempotencyKey,
    single: bool,
    now: datetime,
    until: datetime,
    refused: dict[int, Answer],
) -> Submitted:
    """One transaction: the checks (and quota), the key's row, the jobs; or a rollback."""
    async with service.database.direct_write() as conn:
        accepted = await service.accept(conn, client, requests, now)
        if refused:
            _leave_out(accepted, refused)
        if single and "error" in accepted.answers[0]:
            raise _Rejected(accepted.answers[0])
        stored: Any = accepted.answers[0] if single else tuple(accepted.answers)  # a JSON array
        params = {"owner": client, "idem_key": key.key, "fingerprint": key.fingerprint, "now": now}
        if not await conn.fetch(CLAIM_KEY.pick(service.database), {**params, "stored": stored, "until": until}):
            rows = await conn.fetch(READ_KEY, {"owner": client, "idem_key": key.key, "now": now})
            raise _KeyHeld(rows[0] if rows else None)
        await service.store(conn, accepted)
    service.announce(accepted)
    return Submitted(accepted.answers)


def _replay(key: IdempotencyKey, row: Row) -> Submitted:
    fingerprint, stored = row
    if fingerprint != key.fingerprint:
        metrics.IDEMPOTENCY_CONFLICTS.inc()
        raise IDEMPOTENCY_KEY_REUSED.error({"key": key.key})
    metrics.IDEMPOTENT_REPLAYS.inc()
    return Submitted(stored if isinstance(stored, list) else [stored], replayed=True)


async def _rejected(service: JobService, client: str, key: IdempotencyKey, now: datetime, answer: Answer) -> Submitted:
    """A single submit refused now may have been accepted under its key before (a
    container since removed, a quota since full): the earlier answer wins. Else its
    refusal, and no key kept."""
    async with service.database.direct_read() as conn:
        rows = await conn.fetch(READ_KEY, {"owner": client, "idem_key": key.key, "now": now})
    return _replay(key, rows[0]) if rows else Submitted([answer])


def _leave_out(accepted: Accepted, refused: dict[int, Answer]) -> None:
    """Items the database refused are answered with their refusal and not stored."""
    for item, answer in refused.items():
        row_id = accepted.answers[item].get("id")
        accepted.jobs[:] = [row for row in accepted.jobs if row["id"] != row_id]
        accepted.subscriptions[:] = [row for row in accepted.subscriptions if row["id"] != row_id]
        accepted.answers[item] = answer


async def _refusals(
    service: JobService, client: str, requests: Sequence[JobRequest | JobRejected], now: datetime
) -> dict[int, Answer]:
    """The items whose rows the database refuses (bad data that passed the checks), each
    tried alone in a transaction rolled back: a bad item fails alone (SPEC §10)."""
    try:
        async with service.database.direct_write() as conn:
            accepted = await service.accept(conn, client, requests, now)
            raise _Probe
    except _Probe:
        pass
    rows = {row["id"]: (INSERT_JOBS, row) for row in accepted.jobs}
    rows.update({row["id"]: (INSERT_SUBSCRIPTIONS, row) for row in accepted.subscriptions})
    refused: dict[int, Answer] = {}
    for item, answer in enumerate(accepted.answers):
        if "id" not in answer:
            continue
        into, row = rows[answer["id"]]
        try:
            async with service.database.direct_write() as conn:
                await conn.insert_many(into, [row])
                raise _Probe
        except _Probe:
            continue
        except Exception as exc:
            if is_database_unavailable(exc) or refused_value(exc) is None:
                raise
            refused[item] = refused_answer(answer["id"], exc)
    return refused
