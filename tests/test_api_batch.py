"""POST /api/jobs/batch: answers in order, per-item errors, one transaction, size limit."""

from __future__ import annotations

from tests.conftest import STANDARD_CONFIG
from tests.helpers import (
    assert_error,
    assert_invalid_request,
    assert_uuid4,
    job,
    jobs_of_client,
    listed,
    results,
    submit_batch,
)


async def test_mixed_items_are_answered_in_order_and_the_valid_ones_stored(node, client_address):
    items = [
        job("echo", data={"i": 0}),
        job(),
        "not an object",
        job("echo", "nope"),
        job("echo", "prover", requires_proof=True),
        job("inner"),
        {"containers": ["echo"]},
        job("echo", requires_proof=True),
        job("private"),
        {"containers": ["echo"], "data": [1]},
        job("local", data={"i": 10}),
    ]
    async with node.client(client_address) as http:
        answers = await submit_batch(http, items)
        accepted = [assert_uuid4(answers[i]["id"]) for i in (0, 4, 10)]
        assert all(set(answers[i]) == {"id"} for i in (0, 4, 10))
        assert len(set(accepted)) == 3
        assert answers[1] == {"error": "No containers specified"}
        assert_invalid_request(answers[2], None)
        assert answers[3] == {"error": "Container not supported", "params": {"container": "nope"}}
        assert answers[5] == {"error": "First container must be external", "params": {"first_container": "inner"}}
        assert_invalid_request(answers[6], "data")
        assert answers[7] == {"error": "Container does not generate proof", "params": {"container": "echo"}}
        assert answers[8] == {
            "error": "Container not allowed for address",
            "params": {"container": "private", "address": client_address},
        }
        assert_invalid_request(answers[9], "data")

        assert await listed(http) == accepted
        assert await results(http, *accepted) == [{"id": i, "status": "running", "result": None} for i in accepted]
    assert await jobs_of_client(node.node.database, client_address) == 3


async def test_a_batch_of_only_rejections_stores_nothing(node, client_address):
    async with node.client(client_address) as http:
        answers = await submit_batch(http, [job(), job("nope"), 3])
        assert [a["error"] for a in answers] == [
            "No containers specified",
            "Container not supported",
            "Invalid job request",
        ]
        assert await listed(http) == []


async def test_a_body_that_is_not_a_list(node, client_address):
    too_deep = b'[{"containers": ["echo"], "data": {"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}]"
    bodies = [b'{"containers": ["echo"], "data": {}}', b'"[]"', b"42", b"null", b"[{", b"not json", b"", too_deep]
    async with node.client(client_address) as http:
        for body in bodies:
            r = await http.post("/api/jobs/batch", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (body, r.text)
            assert r.json() == {"error": "Expected a list"}, body
        assert await listed(http) == []


async def test_an_empty_list_answers_an_empty_list(node, client_address):
    async with node.client(client_address) as http:
        r = await http.post("/api/jobs/batch", json=[])
        assert (r.status_code, r.json()) == (200, [])


async def test_batch_too_large(make_node, client_address):
    async with make_node({**STANDARD_CONFIG, "server": {"max_batch": 3}}) as node:
        async with node.client(client_address) as http:
            assert_error(
                await http.post("/api/jobs/batch", json=[job("echo")] * 4),
                400,
                "Batch too large",
                {"limit": 3, "size": 4},
            )
            assert await listed(http) == []
            answers = await submit_batch(http, [job("echo")] * 3)
            assert await listed(http) == [a["id"] for a in answers]
