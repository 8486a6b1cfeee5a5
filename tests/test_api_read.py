"""GET /api/jobs: results by id, a client's job list, its filters and pages."""

from __future__ import annotations

import uuid

from tests.conftest import STANDARD_CONFIG
from tests.helpers import (
    assert_error,
    finish,
    job,
    listed,
    other_address,
    results,
    submit,
    submit_batch,
)


def running(job_id: str) -> dict:
    return {"id": job_id, "status": "running", "result": None}


async def test_results_come_in_the_order_asked_and_unknown_ids_are_left_out(node, client_address):
    async with node.client(client_address) as http:
        a, b, c = [await submit(http) for _ in range(3)]
        unknown = str(uuid.uuid4())
        assert await results(http, c, unknown, a, b) == [running(c), running(a), running(b)]
        assert await results(http, b) == [running(b)]
        assert await results(http, unknown) == []
        # Upper-case spelling of an id is the same UUID.
        assert await results(http, a.upper()) == [running(a)]


async def test_clients_see_only_their_own_jobs(node, client_address):
    neighbour = other_address(client_address)
    async with node.client(client_address) as http, node.client(neighbour) as other:
        mine = await submit(http)
        theirs = await submit(other)
        assert await listed(http) == await listed(http, pending="true") == [mine]
        assert await listed(other) == await listed(other, pending="true") == [theirs]
        assert await results(other, mine) == []
        both = await results(other, mine, theirs, intermediate="true")
        assert both == [{**running(theirs), "intermediate_results": []}]
        # Another client's job id is no cursor either: indistinguishable from a missing one.
        assert_error(
            await other.get("/api/jobs", params={"after": mine}),
            400,
            "Invalid parameter",
            {"name": "after", "value": mine},
        )


async def test_intermediate_results_key_only_when_asked(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)
        assert await results(http, job_id, intermediate="true") == [{**running(job_id), "intermediate_results": []}]
        assert await results(http, job_id, intermediate="false") == [running(job_id)]
        assert await results(http, job_id) == [running(job_id)]


async def test_invalid_job_id(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)
        for bad in ("not-a-uuid", "", "123", job_id + "0"):
            assert_error(
                await http.get("/api/jobs", params=[("id", job_id), ("id", bad)]),
                400,
                "Invalid job id",
                {"id": bad},
            )


async def test_too_many_ids(make_node, client_address):
    async with make_node({**STANDARD_CONFIG, "server": {"max_ids": 2}}) as node:
        async with node.client(client_address) as http:
            a, b = await submit(http), await submit(http)
            assert await results(http, a, b) == [running(a), running(b)]
            assert_error(
                await http.get("/api/jobs", params=[("id", a), ("id", b), ("id", a)]),
                400,
                "Too many ids",
                {"limit": 2},
            )


async def test_invalid_parameters(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)
        unknown = str(uuid.uuid4())
        cases = [
            ({"id": job_id, "intermediate": "yes"}, "intermediate", "yes"),
            ({"id": job_id, "intermediate": "True"}, "intermediate", "True"),
            ({"pending": "1"}, "pending", "1"),
            ({"pending": ""}, "pending", ""),
            ({"limit": "0"}, "limit", "0"),
            ({"limit": "abc"}, "limit", "abc"),
            ({"limit": "-1"}, "limit", "-1"),
            ({"limit": "1.5"}, "limit", "1.5"),
            ({"after": "not-a-uuid"}, "after", "not-a-uuid"),
            ({"after": unknown}, "after", unknown),
            ({"pending": "true", "after": unknown, "limit": "5"}, "after", unknown),
        ]
        for params, name, value in cases:
            assert_error(
                await http.get("/api/jobs", params=params), 400, "Invalid parameter", {"name": name, "value": value}
            )


async def test_list_is_oldest_first_and_filters_on_pending(node, client_address):
    async with node.client(client_address) as http:
        ids = [await submit(http) for _ in range(3)]
        ids += [a["id"] for a in await submit_batch(http, [job("echo")] * 3)]
        ids.append(await submit(http))
        assert await listed(http) == ids
        assert await listed(http, pending="true") == ids
        assert await listed(http, pending="false") == []


async def test_jobs_of_a_batch_keep_their_batch_order(node, client_address):
    async with node.client(client_address) as http:
        before = await submit(http)
        batch = [a["id"] for a in await submit_batch(http, [job("echo", data={"i": i}) for i in range(8)])]
        after = await submit(http)
        assert await listed(http) == [before, *batch, after]
        assert await results(http, *reversed(batch)) == [running(i) for i in reversed(batch)]


async def test_pages_walk_the_whole_list_without_gaps_or_repeats(node, client_address):
    async with node.client(client_address) as http:
        ids = [a["id"] for a in await submit_batch(http, [job("echo")] * 4)]
        ids += [await submit(http) for _ in range(3)]
        await finish(node.node.database, ids[1], "success", [{"container": "echo", "output": {}}])
        await finish(node.node.database, ids[5], "failed", [{"container": "echo", "error": "boom"}])
        unfinished = [i for i in ids if i not in (ids[1], ids[5])]
        walks = [(None, ids, (1, 3, 7)), ("true", unfinished, (2,)), ("false", [ids[1], ids[5]], (1,))]
        for pending, expected, sizes in walks:
            filters = {} if pending is None else {"pending": pending}
            for size in sizes:
                pages, cursor = [], None
                while True:
                    page = await listed(http, limit=size, **filters, **({"after": cursor} if cursor else {}))
                    assert len(page) <= size
                    if not page:
                        break
                    pages.append(page)
                    cursor = page[-1]
                assert [i for page in pages for i in page] == expected, (pending, size)
                assert all(len(page) == size for page in pages[:-1]), (pending, size)
        assert await listed(http, limit=2) == ids[:2]


async def test_finished_jobs_read_as_spec_says(node, client_address):
    output = {"text": "héllo", "list": [1, 2.5, None, {"k": False}], "empty": {}}
    async with node.client(client_address) as http:
        succeeded, failed, cancelled, halfway, queued, one_step = [
            await submit(http, job("echo", "prover")) for _ in range(5)
        ] + [await submit(http)]
        await finish(
            node.node.database,
            succeeded,
            "success",
            [{"container": "echo", "output": {"a": 1}}, {"container": "prover", "output": output}],
        )
        await finish(
            node.node.database,
            failed,
            "failed",
            [{"container": "echo", "output": [1, 2]}, {"container": "prover", "error": "HTTP 500: oops"}],
        )
        await finish(node.node.database, cancelled, "cancelled", [{"container": "echo", "error": "cancelled"}])
        await finish(node.node.database, halfway, "running", [{"container": "echo", "output": "partial"}])
        await finish(node.node.database, one_step, "success", [{"container": "echo", "output": 42}])

        expected = [
            {
                "id": succeeded,
                "status": "success",
                "result": {"container": "prover", "output": output},
                "intermediate_results": [{"container": "echo", "output": {"a": 1}}],
            },
            {
                "id": failed,
                "status": "failed",
                "result": {"container": "prover", "error": "HTTP 500: oops"},
                "intermediate_results": [{"container": "echo", "output": [1, 2]}],
            },
            {
                "id": cancelled,
                "status": "failed",
                "result": {"container": "echo", "error": "cancelled"},
                "intermediate_results": [],
            },
            {
                "id": halfway,
                "status": "running",
                "result": None,
                "intermediate_results": [{"container": "echo", "output": "partial"}],
            },
            {"id": queued, "status": "running", "result": None, "intermediate_results": []},
            {
                "id": one_step,
                "status": "success",
                "result": {"container": "echo", "output": 42},
                "intermediate_results": [],
            },
        ]
        ids = [body["id"] for body in expected]
        assert await results(http, *ids, intermediate="true") == expected
        without = [{k: v for k, v in body.items() if k != "intermediate_results"} for body in expected]
        assert await results(http, *ids) == without

        assert await listed(http) == [succeeded, failed, cancelled, halfway, queued, one_step]
        assert await listed(http, pending="true") == [halfway, queued]
        assert await listed(http, pending="false") == [succeeded, failed, cancelled, one_step]
