"""The statements' scenario: every statement of ``app.db.statements`` used once or more,
in an order that makes sense for one database, with what each answers. It is EXPLAINed
(``tests/test_statements.py``) and run through each driver (``test_statement_drivers``)."""

from __future__ import annotations

import importlib
import itertools
import json
import pkgutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import app.db.statements
from app.db.direct import PerDialect, RowsInsert, Shapes, Statement
from app.db.models import JobStatus, SubscriptionStatus
from app.db.signal import CHANNEL, ENDED_CHANNEL, SUBSCRIPTIONS_CHANNEL
from app.db.statements import claims, retries, submits, webhooks
from app.jobs.requests import JobRequest
from app.jobs.rows import pending_row

# -- the registry ---------------------------------------------------------------------------------


def registry() -> dict[str, Statement | RowsInsert]:
    """Every statement of every module of ``app.db.statements``, by a name that says where
    it is (a factory's shapes and a statement's dialect forms each on their own)."""
    found: dict[str, Statement | RowsInsert] = {}
    for info in pkgutil.iter_modules(app.db.statements.__path__):
        module = importlib.import_module(f"app.db.statements.{info.name}")
        for attribute, value in vars(module).items():
            name = f"{info.name}.{attribute}"
            if isinstance(value, Statement):
                found[name] = value
            elif isinstance(value, PerDialect):
                found[f"{name}.postgresql"] = value.postgresql
                found[f"{name}.sqlite"] = value.sqlite
            elif isinstance(value, RowsInsert):
                found[name] = value
            elif isinstance(value, Shapes) and value.__module__ == module.__name__:
                found.update({f"{name}{args!r}": statement for args, statement in value.all().items()})
    return found


# -- the examples: one scenario that uses every statement, with what each answers -------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)
NODE, OTHER_NODE = "node-1", "node-2"
A, B = "10.0.0.1", "10.0.0.2"
J1, J2, J3, J4, J5, J6, J7 = (str(uuid.UUID(int=n, version=4)) for n in range(1, 8))
UNICODE = "ünïcødé ✓ 𝄞 — \u2028 'quoted' \"double\" \\"
J1_INPUT = {"text": UNICODE, "none": None, "list": [1, None, "x", {"deep": [True, 1.5]}]}
STEP_OUTPUT = {"a": UNICODE, "n": None}
#: J2's webhook.
HOOK = "https://hooks.example.com/jobs?x=ünï"


def job_row(job_id: str, client: str, minutes_ago: int, **columns: Any) -> dict[str, Any]:
    """A new job's row (``INSERT_JOBS``'s columns), pending unless ``columns`` say otherwise."""
    request = JobRequest(containers=["first", "second"], data={"n": minutes_ago})
    row = pending_row(request, client, NOW - timedelta(minutes=minutes_ago), job_id)
    assert tuple(row) == submits.INSERT_JOBS.columns
    return {**row, **columns}


def step_row(job_id: str, position: int, output: Any, error: str | None = None) -> dict[str, Any]:
    row = {
        "job_id": job_id,
        "position": position,
        "container": ["first", "second"][position],
        "output": output,
        "error": error,
        "attempt": 1,
        "node": NODE,
        "started_at": NOW,
        "finished_at": NOW,
    }
    assert tuple(row) == claims.INSERT_STEPS.columns
    return row


def step_docs(rows: list[dict[str, Any]], run_after: list[datetime]) -> dict[str, Any]:
    """``claims.EXTEND_STEPS``/``FINISH_STEPS``' ``steps``: the steps' rows, their claims' ``run_after``."""
    steps = [{**row, "run_after": at} for row, at in zip(rows, run_after, strict=True)]
    return {"steps": steps, "ids": [row["job_id"] for row in rows]}


def at(minutes_ago: int) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


#: Client A's jobs at the end of the scenario: (seq, id, finished).
A_JOBS = [(1, J1, False), (2, J2, True), (3, J3, False), (5, J5, False), (6, J6, False), (7, J7, False)]


def _listed(pending: bool | None, after: bool, limit: bool) -> list[tuple[Any, ...]]:
    """What ``client_job_ids`` answers client A with ``after_seq`` 1 and ``limit`` 2."""
    jobs = [
        (job_id,)
        for seq, job_id, finished in A_JOBS
        if (pending is None or pending != finished) and (not after or seq > 1)
    ]
    return jobs[:2] if limit else jobs


@dataclass(frozen=True)
class Example:
    """Run ``name`` with ``params``; it answers ``rows`` (sorted unless ``ordered``), or for
    an insert, ``params`` are its rows and ``notify`` its ``pg_notify`` arguments."""

    name: str
    params: Any
    rows: list[tuple[Any, ...]] | None = None
    ordered: bool = False
    notify: tuple[str, str] | None = None
    #: Statements of one database only (``PerDialect`` forms).
    dialect: str | None = None


def _client_job_ids(pending: bool | None, after: bool, limit: bool) -> Example:
    params: dict[str, Any] = {"client": A}
    if after:
        params["after_seq"] = 1
    if limit:
        params["limit"] = 2
    return Example(f"reads.client_job_ids{(pending, after, limit)!r}", params, _listed(pending, after, limit), True)


def per_dialect(name: str, params: Any, rows: list[tuple[Any, ...]]) -> list[Example]:
    """The same example for both forms of a ``PerDialect`` statement."""
    return [Example(f"{name}.{dialect}", params, rows, dialect=dialect) for dialect in ("postgresql", "sqlite")]


def owned_params(held: list[tuple[Any, ...]], node: str, **params: Any) -> dict[str, Any]:
    """A step commit's parameters: its claims and their ids (``claims.owned_claims``)."""
    return {"claims": held, "ids": [claim[0] for claim in held], "node": node, **params}


ENDED = (ENDED_CHANNEL, f'["{NODE}",["{J2}"]]')
#: The running node's statements: submits, a claim, step commits, renewal, release, reads.
LIFECYCLE = [
    Example(
        "submits.INSERT_JOBS",
        [job_row(J1, A, 10, input=J1_INPUT), job_row(J2, A, 9, webhook=HOOK), job_row(J3, A, 8)],
        notify=(CHANNEL, "sender ✓"),
    ),
    Example(
        "submits.INSERT_JOBS",
        [
            job_row(J4, B, 7, source="onchain"),
            # Stored claimed, as a submit's handoff or a stream stores it.
            job_row(
                J5,
                A,
                6,
                status=JobStatus.RUNNING,
                attempts=1,
                lease_owner=NODE,
                lease_expires_at=LEASE,
                started_at=at(6),
            ),
        ],
    ),
    *per_dialect(
        "claims.CLAIM",
        {"now": NOW, "limit": 2, "node": NODE, "lease_until": LEASE},
        [
            (J1, ["first", "second"], J1_INPUT, False, 1, at(10), A, 1, 0, False),
            (J2, ["first", "second"], {"n": 9}, False, 1, at(9), A, 2, 0, False),
        ],
    ),
    Example("claims.INSERT_STEPS", [step_row(J1, 0, STEP_OUTPUT), step_row(J2, 0, None, "bad ✗")], notify=ENDED),
    Example("claims.INSERT_STEPS", [step_row(J5, 0, [1, None])]),
    *per_dialect(
        "claims.EXTEND_OWNED",
        owned_params([(J1, 1, at(10)), (J5, 1, at(6)), (J4, 0, at(7)), (J1, 0, at(10))], NODE, lease_until=LEASE),
        [(J1, 1, at(10)), (J5, 1, at(6))],
    ),
    *per_dialect(
        "claims.FINISH_OWNED",
        owned_params([(J2, 1, at(9))], NODE, outcome=JobStatus.FAILED, now=NOW),
        [(J2, 1, at(9), HOOK)],
    ),
    *per_dialect(
        "claims.FINISH_OWNED",  # another node's claim of J1: nothing written
        owned_params([(J1, 1, at(10))], OTHER_NODE, outcome=JobStatus.SUCCESS, now=NOW),
        [],
    ),
    # The one-statement step commits of another node's claims: nothing written, nothing sent
    # (``test_leases`` runs them on the claims held).
    Example(
        "claims.EXTEND_STEPS",
        {**step_docs([step_row(J1, 1, STEP_OUTPUT)], [at(10)]), "node": OTHER_NODE, "lease_until": LEASE},
        [],
        dialect="postgresql",
    ),
    Example(
        "claims.FINISH_STEPS",
        {
            "steps": [{**step_row(J1, 1, None, "bad ✗"), "run_after": at(10), "delivery_id": J7}],
            "ids": [J1],
            "node": OTHER_NODE,
            "outcome": JobStatus.FAILED,
            "now": NOW,
            "channel": ENDED_CHANNEL,
            "sender": NODE,
        },
        [],
        dialect="postgresql",
    ),
    Example(
        "claims.COMMITTED_STEPS",
        {"ids": [J1, J2, J5]},
        [(J1, 0, STEP_OUTPUT, None), (J2, 0, None, "bad ✗"), (J5, 0, [1, None], None)],
    ),
    Example(
        "claims.RENEW.postgresql",
        {"ids": [J1, J2, J5], "node": NODE, "lease_until": LEASE},
        [(J1,), (J5,)],
        dialect="postgresql",
    ),
    Example(
        "claims.RENEW.sqlite",
        {"ids": [J1, J2, J5], "node": NODE, "lease_until": LEASE},
        [(J1,), (J5,)],
        dialect="sqlite",
    ),
    Example("claims.RELEASE", {"ids": [J5, J4], "node": NODE}),
    Example("submits.INSERT_JOBS", [job_row(J6, A, 5), job_row(J7, A, 4, input={})]),
    # A claim after a cursor at the newest job (J7's place in the claim index): of the five
    # jobs pending before it, only J5 (claimed before, handed back) is taken; then handed
    # back again.
    Example(
        "claims.CLAIM_AFTER",
        {"now": NOW, "limit": 2, "node": NODE, "lease_until": LEASE, "after_run_after": at(4), "after_seq": 7},
        [(J5, ["first", "second"], {"n": 6}, False, 1, at(6), A, 5, 0, True)],
        dialect="postgresql",
    ),
    Example("claims.RELEASE", {"ids": [J5], "node": NODE}, dialect="postgresql"),
    Example(
        "reads.RESULTS",
        {"ids": [J1, J2, J3, J4, J5]},
        [
            (J1, A, JobStatus.RUNNING, "first", STEP_OUTPUT, None),
            (J2, A, JobStatus.FAILED, "first", None, "bad ✗"),
            (J3, A, JobStatus.PENDING, None, None, None),
            (J4, B, JobStatus.PENDING, None, None, None),
            (J5, A, JobStatus.PENDING, "first", [1, None], None),
        ],
    ),
    Example("reads.CLIENT_JOB_SEQ", {"client": A, "id": J2}, [(2,)]),
    Example("reads.CLIENT_JOB_SEQ", {"client": B, "id": J2}, []),
    *(_client_job_ids(*shape) for shape in itertools.product((None, True, False), (False, True), (False, True))),
    Example("reads.UNFINISHED_COUNTS", {}, [("offchain", 5), ("onchain", 1)]),
]

# -- the operator's reads, its actions and the maintenance services, after the lifecycle ---------

LATER = NOW + timedelta(minutes=1)
CONTAINERS = ["first", "second"]
#: The jobs as the lifecycle leaves them: (seq, id, status, client, attempts, minutes ago
#: submitted, finished_at).
AFTER_LIFECYCLE = [
    (1, J1, JobStatus.RUNNING, A, 1, 10, None),
    (2, J2, JobStatus.FAILED, A, 1, 9, NOW),
    (3, J3, JobStatus.PENDING, A, 0, 8, None),
    (4, J4, JobStatus.PENDING, B, 0, 7, None),
    (5, J5, JobStatus.PENDING, A, 0, 6, None),
    (6, J6, JobStatus.PENDING, A, 0, 5, None),
    (7, J7, JobStatus.PENDING, A, 0, 4, None),
]


def _summary(job: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row of the operator's job lists: (id, status, client, containers, attempts,
    created_at, finished_at)."""
    _seq, job_id, status, client, attempts, minutes_ago, finished_at = job
    return (job_id, status, client, CONTAINERS, attempts, at(minutes_ago), finished_at)


#: ``newest_jobs``' filters: any state, or one.
NEWEST_STATUSES = (None, *JobStatus.UNFINISHED, *JobStatus.FINISHED)


def _newest_jobs(status: str | None, client: bool) -> Example:
    """The three newest jobs (of client A when ``client``) in ``status``, newest first."""
    params: dict[str, Any] = {"limit": 3, "client": A} if client else {"limit": 3}
    jobs = [job for job in reversed(AFTER_LIFECYCLE) if status in (None, job[2]) and (not client or job[3] == A)]
    return Example(f"inspection.newest_jobs{(status, client)!r}", params, [_summary(job) for job in jobs[:3]], True)


#: J2's whole ``jobs`` row: seq, id, client, source, containers, input, requires_proof,
#: status, attempts, retries, stream, lease_owner, lease_expires_at, run_after, created_at,
#: started_at (its claim), finished_at, subscription_id, interval.
J2_ROW = (
    2,
    J2,
    A,
    "offchain",
    CONTAINERS,
    {"n": 9},
    False,
    JobStatus.FAILED,
    1,
    0,
    False,
    None,
    None,
    at(9),
    at(9),
    NOW,
    NOW,
    None,
    None,
    HOOK,
)
_MINUTE = int(NOW.timestamp() // 60)

# -- webhooks: J2's two deliveries, one retried then delivered, one failed ------------------------

D1, D2 = (str(uuid.UUID(int=n, version=4)) for n in (201, 202))
_RETRY_AT = NOW + timedelta(seconds=1)


def delivery_row(delivery_id: str, due: datetime) -> dict[str, Any]:
    row = {
        "id": delivery_id,
        "job_id": J2,
        "url": HOOK,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": due,
        "created_at": due,
    }
    assert tuple(row) == webhooks.INSERT_DELIVERIES.columns
    return row


WEBHOOKS = [
    Example("webhooks.INSERT_DELIVERIES", [delivery_row(D1, NOW), delivery_row(D2, LATER)]),
    Example("webhooks.NEXT_DUE", {}, [(NOW,)]),
    Example("webhooks.CLAIM_DUE", {"now": NOW, "limit": 10, "lease_until": LEASE}, [(D1, J2, HOOK, 1)]),
    Example("webhooks.CLAIM_DUE", {"now": NOW, "limit": 10, "lease_until": LEASE}, []),  # leased, not due
    Example("webhooks.NEXT_DUE", {}, [(LEASE,)]),
    Example(
        "webhooks.INSERT_ATTEMPTS",
        [
            {
                "delivery_id": D1,
                "attempt": 1,
                "started_at": NOW,
                "finished_at": NOW,
                "status_code": 500,
                "error": "HTTP 500",
            }
        ],
    ),
    Example(
        "webhooks.NOT_DELIVERED",
        {"delivery": D1, "attempt": 1, "state": "pending", "retry_at": _RETRY_AT, "reason": "HTTP 500"},
    ),
    Example("webhooks.RETRYING_ENDPOINTS", {"limit": 10}, [(HOOK, 1, NOW, "HTTP 500")]),
    Example("webhooks.CLAIM_DUE", {"now": LATER, "limit": 1, "lease_until": LATER}, [(D1, J2, HOOK, 2)]),
    Example("webhooks.DELIVERED", {"ids": [D1], "now": LATER}, [(D1, NOW)]),
    Example("webhooks.DELIVERED", {"ids": [D1], "now": LATER}, []),  # once
    Example("webhooks.CLAIM_DUE", {"now": LATER, "limit": 10, "lease_until": LATER}, [(D2, J2, HOOK, 1)]),
    Example(
        "webhooks.NOT_DELIVERED",
        {"delivery": D2, "attempt": 1, "state": "failed", "retry_at": LATER, "reason": "refused"},
    ),
    Example("webhooks.FAILED_ENDPOINTS", {"since": NOW, "limit": 10}, [(HOOK, 1, LATER, "refused")]),
    Example("webhooks.RETRYING_ENDPOINTS", {"limit": 10}, []),
    Example("webhooks.NEXT_DUE", {}, [(None,)]),
    Example("webhooks.JOB_WEBHOOK", {"job": J2}, [(HOOK, JobStatus.FAILED)]),
    Example(
        "webhooks.JOB_DELIVERIES",
        {"job": J2},
        [
            (D1, HOOK, "delivered", 2, LATER, NOW, LATER, None),
            (D2, HOOK, "failed", 1, LATER, LATER, None, "refused"),
        ],
        True,
    ),
    Example("webhooks.DELIVERY_ATTEMPTS", {"ids": [D1, D2]}, [(D1, 1, NOW, NOW, 500, "HTTP 500")]),
]
_J3_FAILURE_STEP = {"job": J3, "step": 0, "container_id": "first", "reason": "cancelled", "by_node": NODE, "now": NOW}
OPERATOR_AND_MAINTENANCE = [
    Example(
        "inspection.JOB",
        {"job": J2},
        [J2_ROW],
    ),
    Example("inspection.JOB_STEPS", {"job": J2}, [(2, J2, 0, "first", None, "bad ✗", 1, NODE, NOW, NOW)]),
    *(_newest_jobs(*shape) for shape in itertools.product(NEWEST_STATUSES, (False, True))),
    Example("inspection.RECENTLY_FAILED", {"limit": 20}, [_summary(AFTER_LIFECYCLE[1])], True),
    Example("inspection.ERRORS", {"ids": [J1, J2, J3]}, [(J2, "first", "bad ✗")]),
    Example("inspection.RETRYABLE_IDS", {}, [(J2,)], True),
    Example(
        "inspection.UNFINISHED_BY_STATE",
        {},
        [(JobStatus.PENDING, "offchain", 4), (JobStatus.PENDING, "onchain", 1), (JobStatus.RUNNING, "offchain", 1)],
    ),
    Example("inspection.RUNNABLE", {"now": NOW}, [(5, at(8))]),
    Example("inspection.FINISHED_SINCE", {"since": at(1)}, [(1,)]),
    Example("inspection.COUNT_BY_STATUS", {}, [(JobStatus.FAILED, 1), (JobStatus.PENDING, 5), (JobStatus.RUNNING, 1)]),
    *(
        Example(
            f"inspection.FINISHED_PER_MINUTE.{dialect}",
            {"since": at(1), "until": at(-1)},
            [(_MINUTE, JobStatus.FAILED, 1)],
            dialect=dialect,
        )
        for dialect in ("postgresql", "sqlite")
    ),
    # The operator cancels J3 (its error step written), then re-queues it (the step goes).
    Example("maintenance.CANCEL", {"job": J3, "now": NOW}, [(CONTAINERS, None)]),
    Example("maintenance.CANCEL", {"job": J2, "now": NOW}, []),  # already finished
    Example("maintenance.STEP_COUNT", {"job": J3}, [(0,)]),
    Example("maintenance.FAILURE_STEP", _J3_FAILURE_STEP),
    Example("inspection.JOB_STEPS", {"job": J3}, [(4, J3, 0, "first", None, "cancelled", 0, NODE, NOW, NOW)]),
    Example("maintenance.REQUEUE", {"job": J3, "now": NOW}),
    Example("maintenance.DROP_ERROR_STEPS", {"job": J3}),
    Example("inspection.JOB_STEPS", {"job": J3}, []),
    Example("inspection.RUNNABLE", {"now": NOW}, [(5, at(7))]),  # J3 runs after its re-queue
    # The reaper: J1's lease (until LEASE) has expired a minute later.
    Example("maintenance.EXPIRED", {"now": NOW, "batch": 100}, []),
    Example("maintenance.EXPIRED", {"now": LATER, "batch": 100}, [(J1, 1, CONTAINERS, False, None)]),
    # A restarted node-1's orphans: J1, its one attempt used.
    Example("maintenance.EXHAUSTED_ORPHANS", {"node": NODE, "max_attempts": 3}, []),
    Example("maintenance.EXHAUSTED_ORPHANS", {"node": NODE, "max_attempts": 1}, [(J1, 1, CONTAINERS, None)]),
    Example("maintenance.REQUEUE_ORPHANS", {"node": NODE}),
    Example("maintenance.REQUEUE_EXPIRED", {"job": J1}),
    Example("maintenance.EXPIRED", {"now": LATER, "batch": 100}, []),
    # J7 fails a minute ago: older than J2, the one job pruned before NOW.
    Example("maintenance.FAIL", {"job": J7, "now": at(1)}),
    Example("inspection.RETRYABLE_IDS", {}, [(J2,), (J7,)], True),
    Example("maintenance.PRUNABLE_COUNT", {"older_than": LATER}, [(2,)]),
    Example("maintenance.PRUNE_BATCH", {"older_than": NOW, "batch": 500}, [(7,)]),
    *(
        Example(f"maintenance.PRUNE.{dialect}", {"older_than": NOW, "batch": 500}, dialect=dialect)
        for dialect in ("postgresql", "sqlite")
    ),
    Example("maintenance.PRUNABLE_COUNT", {"older_than": NOW}, [(0,)]),
    Example("inspection.JOB", {"job": J7}, []),
    # The server's setting is the machine's (``tests/test_upkeep.py`` checks the answer).
    Example("maintenance.AUTOVACUUM_OF_JOBS", {}, dialect="postgresql"),
]

# -- subscriptions: two stored, the ticker starts one's interval (once) ---------------------------

S1, S2, S3 = (str(uuid.UUID(int=n, version=4)) for n in (101, 102, 103))
J8, J9 = (str(uuid.UUID(int=n, version=4)) for n in (8, 9))


def subscription_row(subscription_id: str, client: str, due: datetime) -> dict[str, Any]:
    """A new subscription's columns: every minute, three times, from ``due``."""
    return {
        "id": subscription_id,
        "client": client,
        "containers": CONTAINERS,
        "input": {"s": UNICODE},
        "requires_proof": False,
        "period": 60,
        "frequency": 3,
        "active_at": int(due.timestamp()),
        "next_interval": 1,
        "next_due_at": due,
        "status": SubscriptionStatus.ACTIVE,
        "missed": 0,
        "created_at": NOW,
        "cancelled_at": None,
        "webhook": None,
    }


_S1_AT = int(at(3).timestamp())


def _subscription_ids(active: bool | None, after: bool, limit: bool) -> Example:
    """Client A's subscriptions at the end: S1 (seq 1, completed), S3 (seq 3, active);
    ``after_seq`` 1, ``limit`` 1."""
    ids = [
        (sub,) for seq, sub, on in ((1, S1, False), (3, S3, True)) if active in (None, on) and (not after or seq > 1)
    ]
    params: dict[str, Any] = {"client": A, **({"after_seq": 1} if after else {}), **({"limit": 1} if limit else {})}
    return Example(
        f"subscriptions.client_subscription_ids{(active, after, limit)!r}", params, ids[:1] if limit else ids, True
    )


SUBSCRIPTIONS = [
    Example("subscriptions.DATABASE_NOW", {}, dialect="postgresql"),
    Example(
        "subscriptions.INSERT_SUBSCRIPTIONS",
        [subscription_row(S1, A, at(3)), subscription_row(S2, B, LATER), subscription_row(S3, A, LATER)],
        notify=(SUBSCRIPTIONS_CHANNEL, "sender"),
    ),
    Example("subscriptions.LOCK_CLIENT", {"client": A}, dialect="postgresql"),
    Example("subscriptions.ACTIVE_COUNT", {"client": A}, [(2,)]),
    Example("subscriptions.ACTIVE_TOTAL", {}, [(3,)]),
    Example("subscriptions.DUE", {"now": NOW, "batch": 10}, [(S1, 60, 3, _S1_AT, 1)]),
    Example("subscriptions.DUE_ONE", {"subscription": S1, "now": NOW}, [(S1, 60, 3, _S1_AT, 1)]),
    Example("subscriptions.DUE_ONE", {"subscription": S2, "now": NOW}, []),  # not due yet
    *(
        Example(
            f"subscriptions.INSERT_INTERVAL_JOB.{dialect}",
            {"job": job_id, "subscription": S1, "interval": 3, "now": NOW},
            rows,
            dialect=dialect,
        )
        for dialect in ("postgresql", "sqlite")
        for job_id, rows in ((J8, [(J8,)]), (J9, []))  # the interval has its job: none inserted
    ),
    Example("reads.RESULTS", {"ids": [J8]}, [(J8, A, JobStatus.PENDING, None, None, None)]),
    Example(
        "subscriptions.ADVANCE",
        {"subscription": S1, "following": 4, "due": None, "state": SubscriptionStatus.COMPLETED, "skipped": 2},
    ),
    Example("subscriptions.DUE", {"now": NOW, "batch": 10}, []),
    Example(
        "subscriptions.CLIENT_SUBSCRIPTION",
        {"subscription": S1, "owner": A},
        [(1, S1, CONTAINERS, 60, 3, _S1_AT, SubscriptionStatus.COMPLETED, 4, None, 2)],
    ),
    Example("subscriptions.CLIENT_SUBSCRIPTION", {"subscription": S1, "owner": B}, []),
    *(_subscription_ids(*shape) for shape in itertools.product((None, True, False), (False, True), (False, True))),
    Example("subscriptions.JOB_COUNTS", {"subscription": S1}, [(JobStatus.PENDING, 1)]),
    Example("subscriptions.subscription_jobs(True,)", {"subscription": S1, "limit": 10}, [(3, J8, "pending")]),
    Example(
        "subscriptions.subscription_jobs(False,)",
        {"subscription": S1, "after_interval": 0, "limit": 10},
        [(3, J8, "pending")],
    ),
    Example("subscriptions.JOB_INTERVAL", {"subscription": S1, "job": J8}, [(3,)]),
    Example(
        "subscriptions.LATEST_JOBS",
        {"ids": [S1, S2]},
        [
            (S1, A, SubscriptionStatus.COMPLETED, CONTAINERS, J8),
            (S2, B, SubscriptionStatus.ACTIVE, CONTAINERS, None),
        ],
    ),
    Example("subscriptions.CANCEL", {"subscription": S3, "owner": A, "now": NOW}, [(S3,)]),
    Example("subscriptions.CANCEL", {"subscription": S3, "owner": A, "now": NOW}, []),
    Example("subscriptions.ACTIVE_COUNT", {"client": A}, [(0,)]),
    Example("subscriptions.POSTPONE", {"subscription": S2, "due": LATER}),  # S2 as it was
    Example("subscriptions.NEXT_DUE", {}, [(LATER,)]),
    Example(
        "subscriptions.ENDED_BY_STATE",
        {},
        [(SubscriptionStatus.CANCELLED, 1), (SubscriptionStatus.COMPLETED, 1)],
    ),
    Example("subscriptions.SUBSCRIPTION_OWNER", {"subscription": S2}, [(B,)]),
    Example(
        "subscriptions.newest_subscriptions(False,)",
        {"limit": 2},
        [
            (S3, A, SubscriptionStatus.CANCELLED, 60, 3, 1, None, 0),
            (S2, B, SubscriptionStatus.ACTIVE, 60, 3, 1, LATER, 0),
        ],
        True,
    ),
    Example(
        "subscriptions.newest_subscriptions(True,)",
        {"limit": 2},
        [(S2, B, SubscriptionStatus.ACTIVE, 60, 3, 1, LATER, 0)],
        True,
    ),
]

KEY, OTHER_KEY = "order-7", "retry/1"
STORED = [{"id": J1}, {"error": "No containers specified"}]


def _claim(key: str, client: str, fingerprint: str, now: datetime, rows: list[tuple[Any, ...]]) -> list[Example]:
    """``CLAIM_KEY`` at ``now``: the key is kept 24 hours."""
    params = {
        "owner": client,
        "idem_key": key,
        "fingerprint": fingerprint,
        "stored": tuple(STORED),  # a JSON array (a list parameter is an IN list)
        "now": now,
        "until": now + timedelta(hours=24),
    }
    return [
        Example(f"idempotency.CLAIM_KEY.{dialect}", params, rows, dialect=dialect)
        for dialect in ("postgresql", "sqlite")
    ]


def _read(client: str, key: str, rows: list[tuple[Any, ...]]) -> Example:
    return Example("idempotency.READ_KEY", {"owner": client, "idem_key": key, "now": NOW}, rows)


def _keys(*keys: tuple[str, str, str, Any]) -> str:
    """``CLAIM_KEYS``' and ``READ_KEYS``' parameter: the keys as a JSON array."""
    return json.dumps([dict(zip(("owner", "idem_key", "fingerprint", "stored"), key, strict=True)) for key in keys])


#: Idempotency keys (SPEC §8): a claim, a duplicate's (held: nothing), another client's
#: same key, the read of the held one, an expired one taken over, the prune of expired ones.
IDEMPOTENCY = [
    *_claim(KEY, A, "a" * 64, NOW, [(KEY,)]),
    *_claim(KEY, A, "b" * 64, NOW, []),  # held, not expired: the caller reads it
    *_claim(KEY, B, "b" * 64, NOW + timedelta(hours=1), [(KEY,)]),  # another client's key of that name
    *_claim(OTHER_KEY, A, "c" * 64, NOW - timedelta(hours=30), [(OTHER_KEY,)]),  # expired 6 hours ago
    _read(A, KEY, [("a" * 64, STORED)]),
    _read(A, OTHER_KEY, []),  # expired
    *_claim(OTHER_KEY, A, "d" * 64, NOW, [(OTHER_KEY,)]),  # expired: taken over
    _read(A, OTHER_KEY, [("d" * 64, STORED)]),
    *(  # A's two
        Example(f"idempotency.PRUNE_KEYS.{dialect}", {"now": NOW + timedelta(hours=24), "batch": 500}, dialect=dialect)
        for dialect in ("postgresql", "sqlite")
    ),
    _read(A, KEY, []),
    _read(B, KEY, [("b" * 64, STORED)]),
    # A group commit's keys: A's new one is taken, B's is held (read back), C's is unknown.
    *per_dialect(
        "idempotency.CLAIM_KEYS",
        {
            "keys": _keys((A, "group-1", "e" * 64, {"id": J2}), (B, KEY, "f" * 64, STORED)),
            "now": NOW + timedelta(hours=2),
            "until": NOW + timedelta(hours=26),
        },
        [(A, "group-1")],
    ),
    *per_dialect(
        "idempotency.READ_KEYS",
        {"keys": _keys((B, KEY, "f" * 64, None), ("10.0.0.3", KEY, "f" * 64, None)), "now": NOW + timedelta(hours=2)},
        [(B, KEY, "b" * 64, STORED)],
    ),
    _read(A, "group-1", [("e" * 64, {"id": J2})]),
]

# -- step retries: J10, running here, waits for its step's second attempt -------------------------

J10 = str(uuid.UUID(int=10, version=4))
J10_CLAIM = (J10, 1, at(2))


def attempt_row(job_id: str, position: int, attempt: int, retry_at: datetime) -> dict[str, Any]:
    row = {
        "job_id": job_id,
        "position": position,
        "container": CONTAINERS[position],
        "attempt": attempt,
        "error": "HTTP 503: busy ✗",
        "reason": "5xx",
        "node": NODE,
        "started_at": NOW,
        "finished_at": NOW,
        "retry_at": retry_at,
    }
    assert tuple(row) == retries.INSERT_STEP_ATTEMPTS.columns
    return row


_RETRY = {"claims": [J10_CLAIM], "node": NODE, "retry_at": LATER}
RETRIES = [
    Example(
        "submits.INSERT_JOBS",
        [
            job_row(
                J10,
                A,
                2,
                status=JobStatus.RUNNING,
                attempts=1,
                lease_owner=NODE,
                lease_expires_at=LEASE,
                started_at=at(2),
            )
        ],
    ),
    Example("retries.RETRY_OWNED", {**_RETRY, "node": OTHER_NODE}, []),
    Example("retries.RETRY_OWNED", _RETRY, [(J10,)]),
    Example("retries.RETRY_OWNED", _RETRY, []),  # pending now: no longer held
    Example("retries.INSERT_STEP_ATTEMPTS", [attempt_row(J10, 0, 1, LATER)]),
    Example("retries.STEP_ATTEMPT_COUNTS", {"ids": [J10, J1]}, [(J10, 0, 1)]),
    Example(
        "retries.JOB_STEP_ATTEMPTS",
        {"job": J10},
        [(0, "first", 1, "HTTP 503: busy ✗", "5xx", NODE, NOW, NOW, LATER)],
    ),
    Example("retries.NEXT_DUE", {}, [(at(10),)]),
    Example("retries.DROP_STEP_ATTEMPTS", {"job": J10}),
    Example("retries.STEP_ATTEMPT_COUNTS", {"ids": [J10]}, []),
]

SCENARIO = LIFECYCLE + WEBHOOKS + OPERATOR_AND_MAINTENANCE + SUBSCRIPTIONS + IDEMPOTENCY + RETRIES
