"""Submits with an ``Idempotency-Key`` (SPEC §8): the same request again is answered as
the first time and stores nothing; another request under the same key is a 409.

The key is kept in SQL, per client, so every node sharing the database honours it and a
restart forgets none. It is claimed by the INSERT of its row (``CLAIM_KEY``), in the one
transaction that stores the request's jobs and subscriptions: exactly one of concurrent
duplicates commits, on any nodes (PostgreSQL: the second INSERT waits for the first's
transaction and then conflicts, or goes ahead if it rolled back; SQLite has one writer).
The loser rolls back and answers the stored answer. Answers that are errors (a single
submit's 4xx, a 503) are not kept: the client may fix the request and retry with its key.

Keyed submits of jobs share the submits' group commit (``JobService._insert_batches``)
with each other and with unkeyed ones: one transaction claims the group's keys in one
statement (``claim_keys``: sorted, so that two nodes' groups cannot deadlock on them),
reads the held ones in another, and stores the jobs of the keys it took in the group's one
INSERT. Two submits under one key in a group are one key: the first takes it, the others
are its replays (or 409s). A flush of replays alone is rolled back (nothing to store; a
commit would wait for the disk). Under 32 concurrent clients keyed submits run at
1.6-6.3 times the rate of a transaction each (0.7-1.0 of the unkeyed rate, against
0.1-0.4), at 0.16-0.35 ms of node CPU each against 0.41-1.80 (README, "Idempotent
submits"). Their jobs may be claimed in that INSERT (``app.jobs.handoff``) like unkeyed
ones: the key, the jobs and their claim commit or roll back together, and a claim in the
INSERT is a claim like any other (leased, taken over if this node dies), so nothing of
SPEC §8 depends on how a job is claimed, while its first run no longer waits for the
claim loop.

Shared work does not share fate: a group that fails is flushed again one submit at a
time (``app.db.batching``); a single submit the database refuses then fails alone with a
400 and keeps no key, and a batch with a refused row, like a request with subscriptions
(whose quota is counted in its transaction) or a key that went meanwhile, goes to a
transaction of its own (``_submit_once``), which finds the refused rows (``_refusals``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from app import metrics
from app.clock import utcnow
from app.db.direct import json_dumps
from app.db.errors import is_database_unavailable, refused_value
from app.db.statements.idempotency import CLAIM_KEY, CLAIM_KEYS, READ_KEY, READ_KEYS
from app.db.statements.submits import INSERT_JOBS
from app.db.statements.subscriptions import INSERT_SUBSCRIPTIONS
from app.errors import IDEMPOTENCY_KEY_REUSED
from app.jobs.requests import JobRejected, JobRequest, with_subscriptions
from app.jobs.rows import refused_answer

if TYPE_CHECKING:
    from app.db.direct import DirectConnection, Row
    from app.db.engine import Database
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


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """A keyed submit's key in the submits' group commit, with the answer kept under it:
    a single submit's ``{"id"}``, a batch's answers as a tuple (a JSON array)."""

    owner: str
    key: IdempotencyKey
    stored: Any


@dataclass(frozen=True, slots=True)
class Held:
    """A key of a group commit that was another request's: its ``(fingerprint, answer)``,
    or None if it went between the claim and the read (pruned)."""

    row: Row | None


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
    its items' answers). Raises the 409 ``Idempotency key reused`` for another request.

    Jobs alone go in the submits' group commit; subscriptions (their quota is counted in
    the transaction) and what the group commit hands back go in a transaction of their own."""
    if not with_subscriptions(requests):
        submitted = await _submit_grouped(service, client, requests, key, single)
        if submitted is not None:
            return submitted
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


async def _submit_grouped(
    service: JobService,
    client: str,
    requests: Sequence[JobRequest | JobRejected],
    key: IdempotencyKey,
    single: bool,
) -> Submitted | None:
    """The key and the jobs in the submits' group commit (``claim_keys``); None leaves the
    request to a transaction of its own: a batch with a row the database refused (which
    one: ``_refusals``), a key that went meanwhile."""
    now = utcnow()
    accepted = service.checked(client, requests, now)
    if single and "error" in accepted.answers[0]:
        return await _rejected(service, client, key, now, accepted.answers[0])
    stored: Any = accepted.answers[0] if single else tuple(accepted.answers)  # a JSON array
    try:
        held = await service.insert_keyed(accepted.jobs, KeyClaim(client, key, stored))
    except Exception as exc:
        if is_database_unavailable(exc) or refused_value(exc) is None:
            raise
        if not single:
            return None
        # Refused alone (the group commit tried it alone): no key kept, as for a 400.
        return await _rejected(service, client, key, now, refused_answer(accepted.jobs[0]["id"], exc))
    if held is None:
        return Submitted(accepted.answers)
    return None if held.row is None else _replay(key, held.row)


async def claim_keys(
    conn: DirectConnection, database: Database, claims: Sequence[KeyClaim], now: datetime, until: datetime
) -> list[Held | None]:
    """The keys of a group commit, claimed in its transaction ``conn`` (``CLAIM_KEYS``):
    None for each claim whose key it now holds (its jobs are to be stored), else the key's
    holder. Duplicates in the group (the same client and key) are one key: the first takes
    it, the others are answered as its replays or 409s. On PostgreSQL a key that another
    transaction holds uncommitted waits for its end, as ``CLAIM_KEY`` does; the keys are
    claimed in one order (sorted), so that two group commits cannot deadlock on them."""
    first: dict[tuple[str, str], KeyClaim] = {}
    for claim in claims:
        first.setdefault((claim.owner, claim.key.key), claim)
    entries = [
        {"owner": owner, "idem_key": name, "fingerprint": first[owner, name].key.fingerprint}
        | {"stored": first[owner, name].stored}
        for owner, name in sorted(first)
    ]
    params = {"keys": json_dumps(entries), "now": now, "until": until}
    taken = {(owner, name) for owner, name in await conn.fetch(CLAIM_KEYS.pick(database), params)}
    holders: dict[tuple[str, str], Row] = {}
    if len(taken) < len(entries):
        others = [entry for entry in entries if (entry["owner"], entry["idem_key"]) not in taken]
        rows = await conn.fetch(READ_KEYS.pick(database), {"keys": json_dumps(others), "now": now})
        holders = {(owner, name): (fingerprint, answer) for owner, name, fingerprint, answer in rows}
    outcomes: list[Held | None] = []
    for claim in claims:
        owner_key = (claim.owner, claim.key.key)
        leader = first[owner_key]
        if owner_key not in taken:
            outcomes.append(Held(holders.get(owner_key)))
        elif leader is claim:
            outcomes.append(None)
        else:  # a duplicate of a key this group takes: the first one's answer, as stored
            stored = list(leader.stored) if isinstance(leader.stored, tuple) else leader.stored
            outcomes.append(Held((leader.key.fingerprint, stored)))
    return outcomes


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
