"""A bad job fails alone (SPEC §10, issue 13): a job or request that cannot be stored or
read back — a NUL character, which PostgreSQL refuses in JSON; nesting deeper than
``server.max_json_depth`` — gets its own 400 or ContainerError, and never fails other
clients' requests or jobs that share a statement with it (group commits of submits,
results reads and step results, batches). On SQLite and PostgreSQL, with real container
services (host processes) and many clients at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import func, select, text

from app.clock import utcnow
from app.db.batching import GroupCommit
from app.db.engine import Database
from app.db.models import Job, JobStatus
from app.db.statements.submits import INSERT_JOBS
from app.errors import ClientError
from app.jobs.idempotency import IdempotencyKey
from app.jobs.requests import JobRequest
from app.jobs.rows import new_job_id, pending_row
from app.jobs.values import ClaimedJob
from tests.conftest import BACKENDS
from tests.helpers import assert_error, assert_invalid_request, assert_uuid4, job
from tests.operator_support import add_job, container, fresh_database, scheduled
from tests.support import RunningNode, free_port, node_settings, serve_node, sqlite_threads_joined, wait_finished

NUL_INPUT = b'{"containers": ["echo"], "data": {"a": "\\u0000"}}'
NUL_KEY_INPUT = b'{"containers": ["echo"], "data": {"x": {"k\\u0000": 1}}}'
#: A literal backslash followed by "u0000": no NUL, stored as it is.
BACKSLASH_INPUT = b'{"containers": ["echo"], "data": {"a": "\\\\u0000"}}'
NUL_OUTPUT_ERROR = "output contains a NUL character, which cannot be stored"
DEEP_OUTPUT_ERROR = "output is nested deeper than 64 levels"


def nested(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep (``{}`` is 1)."""
    return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def body_with_data(data: bytes) -> bytes:
    return b'{"containers": ["echo"], "data": ' + data + b"}"


def deep_value(depth: int) -> Any:
    """A value nested ``depth`` levels deep, built without recursion."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def addresses(count: int, third: int = 77) -> list[str]:
    """Loopback client addresses of their own (the tests here run on fresh databases)."""
    return [f"127.{third}.{i // 250}.{i % 250 + 1}" for i in range(count)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_fresh_node(
    backend: str, tmp_path: Path
) -> Callable[[dict[str, Any]], AbstractAsyncContextManager[RunningNode]]:
    """A node on a database of its own: these tests use many client addresses."""

    @asynccontextmanager
    async def factory(config: dict[str, Any]) -> AsyncIterator[RunningNode]:
        async with fresh_database(backend, tmp_path) as url, serve_node(node_settings(url, config)) as node:
            yield node

    return factory


@pytest.fixture
async def fresh_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(backend, tmp_path) as url:
        yield url


def _reason(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert_invalid_request(body, "data")
    return str(body["params"]["reason"])


# -- input: 400 at submit, alone -----------------------------------------------------------------


async def test_nul_and_deep_data_are_refused_alone_among_concurrent_submits(make_fresh_node, host_service):
    """60 clients submit at once, with NUL and over-deep jobs among theirs: those get a
    400 naming ``data``; every other job is stored, runs once, succeeds and reads back."""
    service = host_service("count")
    config = scheduled(container("echo", service.url, concurrency=80), lease_seconds=3, max_concurrent_jobs=100)
    bad = {
        "nul": NUL_INPUT,
        "nul-key": NUL_KEY_INPUT,
        "deep-65": body_with_data(nested(65)),
        "deep-970": body_with_data(nested(970)),
        "deep-5000": body_with_data(nested(5000)),
    }
    async with make_fresh_node(config) as node:
        clients = [node.client(address) for address in addresses(60)]
        try:

            async def good(i: int, http: httpx.AsyncClient) -> str:
                r = await http.post("/api/jobs", json=job("echo", data={"job": f"g{i}"}))
                assert r.status_code == 200, r.text
                return assert_uuid4(r.json()["id"])

            async def refused(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
                return await http.post("/api/jobs", content=body)

            tasks = [good(i, http) for i, http in enumerate(clients)]
            tasks += [refused(clients[k % 60], body) for k, body in enumerate(list(bad.values()) * 4)]
            answers = await asyncio.gather(*tasks)
            stored, rejected = answers[:60], answers[60:]
            reasons = {_reason(r) for r in rejected}
            # Also 5000 levels, too deep even to decode: the reason still names the field.
            assert reasons == {
                "data contains a NUL character, which cannot be stored",
                "data is nested deeper than 64 levels",
            }
            for i, (job_id, http) in enumerate(zip(stored, clients, strict=True)):
                result = (await wait_finished(http, [job_id], timeout=60, intermediate=False))[job_id]
                assert result == {
                    "id": job_id,
                    "status": "success",
                    "result": {"container": "echo", "output": {"job": f"g{i}"}},
                }
                r = await http.get(f"/api/jobs/{job_id}")
                assert r.status_code == 200, r.text
                assert (r.json()["input"], r.json()["attempts"]) == ({"job": f"g{i}"}, 1)
            await asyncio.sleep(3.5)  # a lease expiring would run a job again: none may
            assert service.calls() == {f"g{i}": 1 for i in range(60)}
        finally:
            for http in clients:
                await http.aclose()


async def test_what_is_accepted_reads_back(make_fresh_node):
    """The deepest data accepted (64 levels) and a literal ``\\u0000`` (a backslash, no
    NUL) are stored and read back whole, by both reads."""
    config = scheduled(container("echo", "http://127.0.0.1:9"), enabled=False)
    async with make_fresh_node(config) as node, node.client("127.78.0.1") as http:
        for body, data in ((body_with_data(nested(64)), deep_value(64)), (BACKSLASH_INPUT, {"a": "\\u0000"})):
            r = await http.post("/api/jobs", content=body)
            assert r.status_code == 200, r.text
            job_id = r.json()["id"]
            r = await http.get(f"/api/jobs/{job_id}")
            assert r.status_code == 200, r.text
            assert r.json()["input"] == data
            r = await http.get("/api/jobs", params={"id": job_id})
            assert r.status_code == 200 and r.json()[0]["status"] == "running", r.text


async def test_a_batch_refuses_only_its_bad_items(make_fresh_node, host_service):
    """A batch with NUL and too deep items, sent while 19 other clients submit: only those
    items are refused; the batch's other jobs and the others' run once and succeed."""
    service = host_service("count")
    config = scheduled(container("echo", service.url, concurrency=40), lease_seconds=3)
    items = [
        b'{"containers": ["echo"], "data": {"job": "b0"}}',
        NUL_INPUT,
        body_with_data(nested(65)),
        b'{"containers": ["echo"], "data": {"job": "b3"}}',
        NUL_KEY_INPUT,
        b'{"containers": ["echo"], "data": {"job": "b5", "a": "\\\\u0000"}}',
    ]
    batch = b"[" + b", ".join(items) + b"]"
    async with make_fresh_node(config) as node:
        clients = [node.client(address) for address in addresses(20, third=79)]
        try:

            async def single(i: int, http: httpx.AsyncClient) -> httpx.Response:
                return await http.post("/api/jobs", json=job("echo", data={"job": f"s{i}"}))

            responses = await asyncio.gather(
                clients[0].post("/api/jobs/batch", content=batch),
                *(single(i, http) for i, http in enumerate(clients[1:], start=1)),
            )
            assert all(r.status_code == 200 for r in responses[1:]), [r.text for r in responses]
            r = responses[0]
            assert r.status_code == 200, r.text
            answers = r.json()
            assert len(answers) == 6
            for i in (1, 2, 4):
                assert_invalid_request(answers[i], "data")
            assert answers[2]["params"]["reason"] == "data is nested deeper than 64 levels"
            assert answers[1]["params"]["reason"] == "data contains a NUL character, which cannot be stored"
            ids = [assert_uuid4(answers[i]["id"]) for i in (0, 3, 5)]
            results = await wait_finished(clients[0], ids, intermediate=False)
            assert [results[i]["result"]["output"] for i in ids] == [
                {"job": "b0"},
                {"job": "b3"},
                {"job": "b5", "a": "\\u0000"},
            ]
            for i, (response, http) in enumerate(zip(responses[1:], clients[1:], strict=True), start=1):
                job_id = response.json()["id"]
                result = (await wait_finished(http, [job_id], intermediate=False))[job_id]
                assert result["result"] == {"container": "echo", "output": {"job": f"s{i}"}}
            await asyncio.sleep(3.5)  # a lease expiring would run a job again: none may
            assert service.calls() == {"b0": 1, "b3": 1, "b5": 1, **{f"s{i}": 1 for i in range(1, 20)}}
        finally:
            for http in clients:
                await http.aclose()


async def test_clear_reasons_and_clipped_echoes(make_fresh_node):
    config = scheduled(container("echo", "http://127.0.0.1:9"), enabled=False)
    async with make_fresh_node(config) as node, node.client("127.80.0.1") as http:
        # A lone surrogate is named as such (msgspec says "Input data was truncated").
        r = await http.post("/api/jobs", content=b'{"containers": ["echo"], "data": {"a": "\\ud800"}}')
        reason = r.json()["params"]["reason"]
        assert r.status_code == 400 and "\\ud800" in reason and "surrogate" in reason, r.text
        r = await http.post("/api/jobs", content=b'{"containers": ["echo"], "data": {"a": "\\udc00x"}}')
        assert "\\udc00" in r.json()["params"]["reason"], r.text
        # A valid pair is a character like any other.
        r = await http.post("/api/jobs", content='{"containers": ["echo"], "data": {"a": "\\ud83d\\ude00"}}')
        assert r.status_code == 200, r.text
        assert (await http.get(f"/api/jobs/{r.json()['id']}")).json()["input"] == {"a": "\U0001f600"}
        # A huge container id is not echoed back whole.
        huge = "x" * 900_000
        r = await http.post("/api/jobs", json=job(huge))
        assert_error(r, 400, "Container not supported", {"container": "x" * 256 + "…"})
        assert len(r.content) < 1000
        r = await http.post("/api/jobs/batch", json=[job(huge), job("echo")])
        assert r.json()[0] == {"error": "Container not supported", "params": {"container": "x" * 256 + "…"}}
        r = await http.get("/api/jobs", params={"id": "y" * 5000})
        assert_error(r, 400, "Invalid job id", {"id": "y" * 256 + "…"})
        # The streaming endpoint checks its job's data the same way.
        for body in (NUL_INPUT, body_with_data(nested(65))):
            _reason(await http.post("/api/jobs/stream", content=body))


# -- container output: a ContainerError, after one call, alone ------------------------------------


async def test_unstorable_outputs_fail_alone_among_concurrent_jobs(make_fresh_node, host_service):
    """60 normal jobs from 60 clients run at once with 12 whose container answers a NUL or
    nests 990 deep: each normal job succeeds after exactly one call; each bad one fails
    with a ContainerError that says why, after exactly one call (not run again)."""
    service = host_service("answer")
    config = scheduled(container("echo", service.url, concurrency=80), lease_seconds=3, max_concurrent_jobs=100)
    async with make_fresh_node(config) as node:
        clients = [node.client(address) for address in addresses(72, third=81)]
        try:

            async def run(i: int, http: httpx.AsyncClient) -> tuple[str, str]:
                answer = "nul" if i >= 60 and i % 2 else "deep" if i >= 60 else "echo"
                r = await http.post("/api/jobs", json=job("echo", data={"job": f"j{i}", "answer": answer}))
                assert r.status_code == 200, r.text
                return r.json()["id"], answer

            submitted = await asyncio.gather(*(run(i, http) for i, http in enumerate(clients)))
            results = {}
            for (job_id, _), http in zip(submitted, clients, strict=True):
                results.update(await wait_finished(http, [job_id], timeout=60, intermediate=False))
            for i, ((job_id, answer), http) in enumerate(zip(submitted, clients, strict=True)):
                result = results[job_id]
                if answer == "echo":
                    assert result == {
                        "id": job_id,
                        "status": "success",
                        "result": {"container": "echo", "output": {"job": f"j{i}", "answer": "echo"}},
                    }
                else:
                    error = NUL_OUTPUT_ERROR if answer == "nul" else DEEP_OUTPUT_ERROR
                    assert result == {"id": job_id, "status": "failed", "result": {"container": "echo", "error": error}}
                detail = (await http.get(f"/api/jobs/{job_id}")).json()
                assert detail["attempts"] == 1, detail
            await asyncio.sleep(3.5)  # a lease expiring would run a job again: none may
            assert service.calls() == {f"j{i}": 1 for i in range(72)}
        finally:
            for http in clients:
                await http.aclose()


async def test_a_chain_stops_at_the_unstorable_output(make_fresh_node, host_service):
    """The bad output of a first container is not passed on: the chain ends there."""
    first, second = host_service("answer"), host_service("count")
    config = scheduled(container("first", first.url), container("second", second.url, external=False), lease_seconds=3)
    async with make_fresh_node(config) as node, node.client("127.82.0.1") as http:
        r = await http.post("/api/jobs", json=job("first", "second", data={"job": "c", "answer": "nul"}))
        job_id = r.json()["id"]
        result = (await wait_finished(http, [job_id]))[job_id]
        assert result == {
            "id": job_id,
            "status": "failed",
            "intermediate_results": [],
            "result": {"container": "first", "error": NUL_OUTPUT_ERROR},
        }
        assert first.calls() == {"c": 1} and second.calls() == {}


async def test_a_nul_byte_in_a_container_body_fails_its_step(make_fresh_node, host_service):
    """A NUL byte is not JSON (a step's ContainerError), and a streamed body holding one
    cannot be stored as the job's text output: the stream passes it through, and the job
    ends failed, at once, instead of its commit failing (PostgreSQL) and the job being
    left running."""
    service = host_service("answer")
    config = scheduled(container("echo", service.url), lease_seconds=3)
    async with make_fresh_node(config) as node, node.client("127.88.0.1") as http:
        job_id = (await http.post("/api/jobs", json=job("echo", data={"job": "b", "answer": "nulbyte"}))).json()["id"]
        result = (await wait_finished(http, [job_id], intermediate=False))[job_id]
        assert result["result"] == {"container": "echo", "error": "not valid JSON: a\\x00b"}, result
        async with http.stream(
            "POST", "/api/jobs/stream", json=job("echo", data={"job": "s", "answer": "nulbyte"})
        ) as response:
            assert response.status_code == 200
            text = b"".join([chunk async for chunk in response.aiter_bytes()])
        job_id, body = text.split(b"\n", 1)
        assert body == b"a\x00b"
        result = (await wait_finished(http, [job_id.decode()], timeout=2, intermediate=False))[job_id.decode()]
        assert result["result"] == {"container": "echo", "error": NUL_OUTPUT_ERROR}
        assert service.calls() == {"b": 1, "s": 1}


# -- the group commits themselves ------------------------------------------------------------------


def _row(job_id: str, data: Any) -> dict[str, Any]:
    return pending_row(JobRequest(containers=["echo"], data=data), "127.83.0.1", utcnow(), job_id)


async def test_group_commit_flushes_each_item_alone_when_the_group_fails(fresh_url):
    """A real INSERT of several jobs in one statement, one of them a duplicate id (which
    either database refuses): the others are stored, only the duplicate fails."""
    database = Database(fresh_url)
    flushes: list[int] = []

    async def insert(batches: list[list[dict[str, Any]]]) -> list[BaseException | None]:
        flushes.append(sum(len(rows) for rows in batches))
        async with database.direct_write(one_statement=True) as conn:
            await conn.insert_many(INSERT_JOBS, [row for rows in batches for row in rows])
        return [None] * len(batches)

    try:
        taken = new_job_id()
        await GroupCommit(insert)([_row(taken, {"first": True})])
        group: GroupCommit[list[dict[str, Any]], None] = GroupCommit(insert)
        ids = [new_job_id() for _ in range(8)]
        items = [[_row(i, {"n": n})] for n, i in enumerate(ids)]
        items.insert(4, [_row(taken, {"duplicate": True})])
        flushes.clear()
        outcomes = await asyncio.gather(*(group(item) for item in items), return_exceptions=True)
        assert flushes == [9] + [1] * 9, "one statement for all, which failed, then one each"
        assert [outcome is None for outcome in outcomes] == [True] * 4 + [False] + [True] * 4
        assert "duplicate" in str(outcomes[4]).lower() or "unique" in str(outcomes[4]).lower(), outcomes[4]
        async with database.read() as conn:
            stored = (await conn.execute(select(func.count()).select_from(Job).where(Job.id.in_(ids)))).scalar_one()
        assert stored == 8
    finally:
        await database.dispose()


async def test_group_commit_does_not_retry_item_by_item_without_a_database(backend, tmp_path):
    """An unreachable database fails the group once: each item alone would only wait again."""
    url = (
        f"sqlite+aiosqlite:///{tmp_path}/missing/dir/jobnode.db"
        if backend == "sqlite"
        else f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    )
    database = Database(url, connect_timeout=2)
    flushes: list[int] = []

    async def insert(batches: list[list[dict[str, Any]]]) -> list[BaseException | None]:
        flushes.append(len(batches))
        async with database.direct_write(one_statement=True) as conn:
            await conn.insert_many(INSERT_JOBS, [row for rows in batches for row in rows])
        return [None] * len(batches)

    async with sqlite_threads_joined():
        try:
            from app.db.errors import is_database_unavailable
            from app.jobs.rows import new_job_id

            group: GroupCommit[list[dict[str, Any]], None] = GroupCommit(insert)
            outcomes = await asyncio.gather(
                *(group([_row(new_job_id(), {"n": n})]) for n in range(6)), return_exceptions=True
            )
            assert all(isinstance(o, Exception) and is_database_unavailable(o) for o in outcomes), outcomes
            assert flushes == [6], "the group was not flushed again item by item"
        finally:
            await database.dispose()


async def test_a_submit_group_that_fails_keeps_its_claims_right(make_fresh_node, host_service, backend):
    """Submits that share an INSERT with a job the database refuses (one that got past the
    request checks: called here below the HTTP layer) are stored each alone: the refused
    one fails alone, with a 400's answer, and the others run at once, exactly once, also
    those the failed INSERT had claimed for this node (max_concurrent_jobs 2 of 6)."""
    service = host_service("count")
    config = scheduled(container("echo", service.url), lease_seconds=30, max_concurrent_jobs=2)
    async with make_fresh_node(config) as node, node.client("127.84.0.1") as http:
        jobs = node.node.jobs
        client = "127.84.0.1"
        good = [JobRequest(containers=["echo"], data={"job": f"g{i}"}) for i in range(6)]
        # Too deep for the encoder on either database (and a NUL too, on PostgreSQL).
        poison = JobRequest(containers=["echo"], data={"a": deep_value(5000), "b": "\x00"})
        answers = await asyncio.gather(
            jobs.submit(client, [good[0]]),
            *(jobs.submit(client, [r]) for r in good[1:3]),
            jobs.submit(client, [poison]),
            *(jobs.submit(client, [r]) for r in good[3:]),
        )
        refused = answers.pop(3)[0]
        assert refused["error"] == "Invalid job request", refused
        assert refused["params"]["reason"].startswith("data could not be stored: "), refused
        ids = [answer[0]["id"] for answer in answers]
        results = await wait_finished(http, ids, timeout=20, intermediate=False)
        assert [results[i]["status"] for i in ids] == ["success"] * 6
        assert service.calls() == {f"g{i}": 1 for i in range(6)}


def _recording_flushes(jobs: Any) -> list[int]:
    """The sizes of the submits' group commits from now on (each a list of submits)."""
    sizes: list[int] = []
    flush = jobs._insert._flush

    async def recording(batches: list[Any]) -> Any:
        sizes.append(len(batches))
        return await flush(batches)

    jobs._insert._flush = recording
    return sizes


async def test_keyed_submits_share_a_group_commit_and_a_poison_fails_alone(make_fresh_node, host_service):
    """Keyed submits (``Idempotency-Key``) go in the submits' group commit: one transaction
    takes their keys and stores their jobs. Two under one key in a group make one job (the
    second is its replay; another body under it a 409). One the database refuses among them
    (past the request checks: called below the HTTP layer) fails alone, as a 400, keeping no
    key; a keyed batch with such an item keeps its key with that item refused; the others
    are stored once and run once, also those the failed group had claimed for this node."""
    service = host_service("count")
    config = scheduled(container("echo", service.url), lease_seconds=30, max_concurrent_jobs=2)
    client = "127.86.0.1"
    async with make_fresh_node(config) as node, node.client(client) as http:
        jobs, database = node.node.jobs, node.node.database
        flushes = _recording_flushes(jobs)

        def request(name: str) -> JobRequest:
            return JobRequest(containers=["echo"], data={"job": name})

        def keyed(name: str, requests: list[JobRequest], fingerprint: str = "a", single: bool = True) -> Any:
            return jobs.submit_keyed(client, requests, IdempotencyKey(name, fingerprint * 64), single)

        # Without a poison: one group, one transaction, duplicates resolved in it.
        first = await asyncio.gather(
            *(keyed(f"g{i}", [request(f"g{i}")]) for i in range(4)),
            keyed("g0", [request("g0")]),
            keyed("g0", [request("other")], fingerprint="b"),
            jobs.submit(client, [request("unkeyed")]),
            return_exceptions=True,
        )
        assert flushes == [7], flushes
        assert [answer.replayed for answer in first[:5]] == [False] * 4 + [True]  # type: ignore[union-attr]
        assert first[4].answers == first[0].answers  # type: ignore[union-attr]
        assert isinstance(first[5], ClientError) and first[5].spec.status == 409, first[5]
        ids = [answer.answers[0]["id"] for answer in first[:4]] + [first[6][0]["id"]]  # type: ignore[index,union-attr]

        # With a poison (too deep for the encoder on either database, a NUL too).
        poison = JobRequest(containers=["echo"], data={"a": deep_value(5000), "b": "\x00"})
        flushes.clear()
        second = await asyncio.gather(
            keyed("p0", [request("p0")]),
            keyed("poison", [poison]),
            keyed("p1", [request("p1")]),
            keyed("p1", [request("p1")]),
            keyed("batch", [request("b0"), poison, request("b2")], single=False),
            keyed("p2", [request("p2")]),
        )
        assert flushes == [6, 1, 1, 1, 1, 1, 1], "one transaction for all, which failed, then one each"
        refused = second[1].answers[0]
        assert refused["error"] == "Invalid job request" and not second[1].replayed, refused
        assert refused["params"]["reason"].startswith("data could not be stored: "), refused
        assert not second[2].replayed and second[3].replayed and second[3].answers == second[2].answers
        batch = second[4].answers
        assert [set(answer) for answer in batch] == [{"id"}, {"error", "params"}, {"id"}], batch
        assert batch[1]["params"]["reason"].startswith("data could not be stored: "), batch
        ids += [second[k].answers[0]["id"] for k in (0, 2, 5)] + [batch[0]["id"], batch[2]["id"]]

        # Every key but the poison's is kept: the same again is a replay; the poison's key
        # is free for the fixed request.
        replays = [
            (keyed("p0", [request("p0")]), second[0]),
            (keyed("p1", [request("p1")]), second[2]),
            (keyed("batch", [request("b0"), poison, request("b2")], single=False), second[4]),
        ]
        for replay, answered in replays:
            again = await replay
            assert again.replayed and again.answers == answered.answers
        fixed = await keyed("poison", [request("fixed")])
        assert not fixed.replayed
        ids.append(fixed.answers[0]["id"])

        results = await wait_finished(http, ids, timeout=20, intermediate=False)
        assert [results[i]["status"] for i in ids] == ["success"] * len(ids)
        names = ["g0", "g1", "g2", "g3", "unkeyed", "p0", "p1", "p2", "b0", "b2", "fixed"]
        assert service.calls() == dict.fromkeys(names, 1)
        async with database.read() as conn:
            count = select(func.count()).select_from(Job).where(Job.client == client)
            assert (await conn.execute(count)).scalar_one() == len(names)


async def test_a_batch_item_the_database_refuses_fails_alone(make_fresh_node):
    config = scheduled(container("echo", "http://127.0.0.1:9"), enabled=False)
    async with make_fresh_node(config) as node, node.client("127.85.0.1") as http:
        requests = [
            JobRequest(containers=["echo"], data={"n": 0}),
            JobRequest(containers=["echo"], data=deep_value(5000)),
            JobRequest(containers=["echo"], data={"n": 2}),
        ]
        answers = await node.node.jobs.submit("127.85.0.1", requests)
        assert answers[1]["error"] == "Invalid job request", answers
        assert answers[1]["params"]["reason"] == "data could not be stored: nested too deeply to encode"
        ids = [answers[0]["id"], answers[2]["id"]]
        read = await http.get("/api/jobs", params=[("id", i) for i in ids])
        assert [r["id"] for r in read.json()] == ids


async def test_a_step_whose_output_the_database_refuses_fails_the_job_once(make_fresh_node, host_service):
    """The net under the output checks: a step result the database refuses (committed in
    one group with another job's step) ends its own job failed with a ContainerError, and
    the other job's step is committed as usual."""
    config = scheduled(container("echo", "http://127.0.0.1:9"), enabled=False, lease_seconds=30)
    async with make_fresh_node(config) as node, node.client("127.86.0.1") as http:
        ids = [(await http.post("/api/jobs", json=job("echo", data={"n": n}))).json()["id"] for n in range(2)]
        runner, store = node.node.scheduler.runner, node.node.scheduler.store
        claimed: list[ClaimedJob] = sorted(await store.claim(2), key=lambda j: ids.index(j.id))
        errors = await asyncio.gather(
            runner._record(claimed[0], 0, utcnow(), output={"fine": True}),
            runner._record(claimed[1], 0, utcnow(), output=deep_value(5000)),
        )
        assert errors == [None, "output could not be stored: nested too deeply to encode"]
        read = await http.get("/api/jobs", params=[("id", i) for i in ids])
        assert read.json() == [
            {"id": ids[0], "status": "success", "result": {"container": "echo", "output": {"fine": True}}},
            {
                "id": ids[1],
                "status": "failed",
                "result": {"container": "echo", "error": "output could not be stored: nested too deeply to encode"},
            },
        ]


async def test_one_unreadable_job_fails_only_its_own_read(make_fresh_node, backend):
    """Concurrent reads share one statement; a job stored before these checks existed that
    cannot be decoded (nested 5000 deep) fails the read that asks for it, not the others."""
    from app.jobs.rows import new_job_id

    config = scheduled(container("echo", "http://127.0.0.1:9"), enabled=False)
    async with make_fresh_node(config) as node:
        database, jobs = node.node.database, node.node.jobs
        clients = addresses(21, third=87)
        ids = [new_job_id() for _ in clients]
        for n, (client, job_id) in enumerate(zip(clients, ids, strict=True)):
            await add_job(
                database,
                job_id,
                client=client,
                status=JobStatus.SUCCESS,
                steps=[{"container": "echo", "output": {"n": n}}],
            )
        value = "CAST(:value AS jsonb)" if backend == "postgresql" else ":value"
        async with database.write() as conn:
            await conn.execute(
                text(
                    f"UPDATE job_steps SET output = {value} WHERE job_id IN "
                    f"(SELECT id FROM jobs WHERE client = :client)"
                ),
                {"value": "[" * 5000 + "]" * 5000, "client": clients[0]},
            )
        outcomes = await asyncio.gather(
            *(jobs.results(client, [job_id], False) for client, job_id in zip(clients, ids, strict=True)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], RecursionError), outcomes[0]
        assert outcomes[1:] == [
            [{"id": job_id, "status": "success", "result": {"container": "echo", "output": {"n": n}}}]
            for n, job_id in enumerate(ids)
            if n > 0
        ]


def test_the_depth_limit_is_configurable_within_bounds():
    from app.config.values import ConfigError

    assert node_settings("sqlite+aiosqlite:///x.db").server.max_json_depth == 64
    assert node_settings("sqlite+aiosqlite:///x.db", {"server": {"max_json_depth": 200}}).server.max_json_depth == 200
    for wrong in (0, 501):
        with pytest.raises(ConfigError, match=r"server\.max_json_depth"):
            node_settings("sqlite+aiosqlite:///x.db", {"server": {"max_json_depth": wrong}})


def test_msgspec_encodes_what_the_depth_limit_lets_through():
    """The limit's ceiling (500) is within what the JSON encoder and decoder manage."""
    value = deep_value(500)
    assert msgspec.json.decode(msgspec.json.encode(value)) == value
