"""POST /api/jobs: what is accepted, and every rejection of SPEC §1's table in its order."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.db.models import Job
from tests.helpers import (
    assert_error,
    assert_invalid_request,
    job,
    jobs_of_client,
    listed,
    other_address,
    results,
    submit,
)

URL = "http://127.0.0.1:9"

#: (body as sent, the field the reason must name or None): each is "Invalid job request".
MALFORMED: list[tuple[bytes, str | None]] = [
    (b"", None),
    (b"not json", None),
    (b'{"containers": ["echo"], "data": {', None),
    (b'[{"containers": ["echo"], "data": {}}]', None),
    (b'"a string"', None),
    (b"42", None),
    (b"null", None),
    (b'{"data": {}}', "containers"),
    (b'{"containers": ["echo"]}', "data"),
    (b'{"containers": "echo", "data": {}}', "containers"),
    (b'{"containers": {"0": "echo"}, "data": {}}', "containers"),
    (b'{"containers": null, "data": {}}', "containers"),
    (b'{"containers": ["echo", 7], "data": {}}', "containers"),
    (b'{"containers": ["echo"], "data": ["x"]}', "data"),
    (b'{"containers": ["echo"], "data": "x"}', "data"),
    (b'{"containers": ["echo"], "data": null}', "data"),
    (b'{"containers": ["echo"], "data": {}, "requires_proof": "true"}', "requires_proof"),
    (b'{"containers": ["echo"], "data": {}, "requires_proof": 1}', "requires_proof"),
    (b'{"containers": ["echo"], "data": {"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}", None),
]


async def test_accepted_job_gets_a_fresh_uuid4_and_is_stored_as_sent(node, client_address):
    data = {"prompt": "héllo", "n": [1, 2.5, None, True], "nested": {"deep": {}}}
    async with node.client(client_address) as http:
        first = await submit(http, job("echo", "prover", data=data, requires_proof=True))
        second = await submit(http)
        assert first != second
        assert await results(http, first, second) == [
            {"id": first, "status": "running", "result": None},
            {"id": second, "status": "running", "result": None},
        ]
        assert await listed(http) == [first, second]
    async with node.node.database.read() as conn:
        row = (
            await conn.execute(select(Job.client, Job.containers, Job.input, Job.requires_proof).where(Job.id == first))
        ).one()
    assert tuple(row) == (client_address, ["echo", "prover"], data, True)


async def test_malformed_bodies_are_invalid_job_requests_naming_the_field(node, client_address):
    async with node.client(client_address) as http:
        for body, field in MALFORMED:
            r = await http.post("/api/jobs", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (body, r.status_code, r.text)
            assert_invalid_request(r.json(), field)
        assert await listed(http) == []
    assert await jobs_of_client(node.node.database, client_address) == 0


async def test_each_rejection_of_the_table(node, client_address):
    async with node.client(client_address) as http:

        async def rejected(body, error, params=None):
            r = await http.post("/api/jobs", json=body)
            if params is None:
                assert_error(r, 400, error)
            else:
                assert_error(r, 400, error, params)

        await rejected(job(), "No containers specified")
        await rejected(job("echo", "nope"), "Container not supported", {"container": "nope"})
        await rejected(job("inner", "echo"), "First container must be external", {"first_container": "inner"})
        await rejected(job("echo", requires_proof=True), "Container does not generate proof", {"container": "echo"})
        await rejected(
            job("prover", "echo", requires_proof=True), "Container does not generate proof", {"container": "echo"}
        )
        await rejected(
            job("private"), "Container not allowed for address", {"container": "private", "address": client_address}
        )
        await rejected(
            job("echo", "local", "private"),
            "Container not allowed for address",
            {"container": "private", "address": client_address},
        )
        assert await listed(http) == []
        # The same containers in shapes the table allows.
        accepted = [
            await submit(http, job("echo", "inner")),
            await submit(http, job("echo", "prover", requires_proof=True)),
            await submit(http, job("prover", "echo", requires_proof=False)),
            await submit(http, job("local")),
        ]
        assert await listed(http) == accepted


async def test_rejections_come_in_the_order_of_the_table(node, client_address):
    cases = [
        # (body, the error that wins)
        ({"containers": ["nope"], "data": [], "requires_proof": True}, "Invalid job request"),
        ({"containers": [], "data": {}, "requires_proof": "yes"}, "Invalid job request"),
        (job(requires_proof=True), "No containers specified"),
        (job("inner", "nope"), "Container not supported"),
        (job("private", "nope", requires_proof=True), "Container not supported"),
        (job("inner", "echo", requires_proof=True), "First container must be external"),
        (job("inner", "private"), "First container must be external"),
        (job("private", requires_proof=True), "Container does not generate proof"),
        (job("private", "prover", requires_proof=True), "Container not allowed for address"),
    ]
    async with node.client(client_address) as http:
        for body, error in cases:
            r = await http.post("/api/jobs", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"] == error, (body, r.json())


async def test_allowed_ips_take_cidr_ranges_for_ipv4_and_ipv6(make_node, client_address):
    network = client_address.rsplit(".", 1)[0] + ".0/24"
    outsider = other_address(client_address)
    config = {
        "scheduler": {"enabled": False},
        "containers": [
            {"id": "v4net", "url": URL, "allowed_ips": [network, "10.0.0.0/8"]},
            {"id": "v6", "url": URL, "allowed_ips": ["::1/128"]},
            {"id": "open", "url": URL},
        ],
    }
    async with make_node(config) as node:
        async with node.client(client_address) as http:
            allowed = await submit(http, job("v4net", "open"))
            assert_error(
                await http.post("/api/jobs", json=job("v6")),
                400,
                "Container not allowed for address",
                {"container": "v6", "address": client_address},
            )
            assert await listed(http) == [allowed]
        async with node.client(outsider) as http:
            assert_error(
                await http.post("/api/jobs", json=job("open", "v4net")),
                400,
                "Container not allowed for address",
                {"container": "v4net", "address": outsider},
            )
            assert await listed(http) == []
        async with node.client("::1") as http6:
            v6_job = await submit(http6, job("v6"))
            assert_error(
                await http6.post("/api/jobs", json=job("v4net")),
                400,
                "Container not allowed for address",
                {"container": "v4net", "address": "::1"},
            )
            assert v6_job in await listed(http6)


async def test_ipv6_client_is_its_own_client(node, client_address):
    async with node.client("::1") as http6:
        for container in ("private", "local"):
            assert_error(
                await http6.post("/api/jobs", json=job(container)),
                400,
                "Container not allowed for address",
                {"container": container, "address": "::1"},
            )
        job_id = await submit(http6)
        assert job_id in await listed(http6)
        assert await results(http6, job_id) == [{"id": job_id, "status": "running", "result": None}]
    async with node.client(client_address) as http:
        assert await listed(http) == []
        assert await results(http, job_id) == []


async def test_body_cannot_choose_the_job_id_or_the_client(node, client_address):
    chosen_id = str(uuid.uuid4())
    spoofed = "10.1.2.3"
    async with node.client(client_address) as http:
        job_id = await submit(http, job("echo", id=chosen_id, ip=spoofed, client=spoofed, address=spoofed))
        assert job_id != chosen_id
        assert await results(http, chosen_id) == []
        assert await listed(http) == [job_id]
        # "private" allows 10.1.0.0/16: a body field naming such an address changes nothing.
        assert_error(
            await http.post("/api/jobs", json=job("private", ip=spoofed, client=spoofed)),
            400,
            "Container not allowed for address",
            {"container": "private", "address": client_address},
        )
    async with node.node.database.read() as conn:
        clients = (await conn.execute(select(Job.client).where(Job.id.in_([job_id, chosen_id])))).scalars().all()
    assert clients == [client_address]


async def test_content_type_is_not_required_and_unknown_keys_are_ignored(node, client_address):
    body = b'{"containers": ["echo"], "data": {"a": 1}}'
    async with node.client(client_address) as http:
        ids = []
        for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}):
            r = await http.post("/api/jobs", content=body, headers=headers)
            assert r.request.headers.get("content-type") == headers.get("content-type")
            assert r.status_code == 200, (headers, r.text)
            ids.append(r.json()["id"])
        extra = job("echo", requires_proof=False, callback="http://example.invalid", priority=9, meta={"k": [1]})
        ids.append(await submit(http, extra))
        assert await listed(http) == ids
