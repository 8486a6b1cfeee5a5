"""Limits and identity: body size, rate limit, trusted proxies, an unreachable database."""

from __future__ import annotations

from pathlib import Path

from app.db.engine import Database
from tests.conftest import STANDARD_CONFIG
from tests.helpers import (
    assert_error,
    job,
    jobs_of_client,
    listed,
    other_address,
    results,
    submit,
    submit_batch,
)
from tests.support import RunningNode, sqlite_threads_joined

LIMIT = 300


def padded(size: int) -> bytes:
    """A valid JobRequest of exactly ``size`` bytes."""
    head, tail = b'{"containers": ["echo"], "data": {"pad": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def chunks(body: bytes, size: int = 64):
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_body_over_the_limit_is_413(make_node, client_address):
    async with make_node({**STANDARD_CONFIG, "server": {"max_body_bytes": LIMIT}}) as node:
        async with node.client(client_address) as http:
            r = await http.post("/api/jobs", content=padded(LIMIT))
            assert r.status_code == 200, r.text
            accepted = r.json()["id"]
            too_large = {"error": "Request body too large", "params": {"limit": LIMIT}}
            for path in ("/api/jobs", "/api/jobs/batch"):
                body = padded(LIMIT + 1) if path == "/api/jobs" else b"[" + padded(LIMIT) + b"]"
                r = await http.post(path, content=body)
                assert (r.status_code, r.json()) == (413, too_large), path
                # Chunked: no Content-Length, the limit applies to what arrives.
                r = await http.post(path, content=chunks(body))
                assert "content-length" not in r.request.headers
                assert (r.status_code, r.json()) == (413, too_large), path
            r = await http.post("/api/jobs", content=chunks(padded(LIMIT)))
            assert r.status_code == 200, r.text
            assert await listed(http) == [accepted, r.json()["id"]]


async def test_rate_limit_per_client(make_node, client_address):
    config = {**STANDARD_CONFIG, "server": {"rate_limit": {"num_requests": 3, "period": 60}}}
    async with make_node(config) as node:
        async with node.client(client_address) as http:
            job_id = await submit(http)
            assert await listed(http) == [job_id]
            assert (await http.get("/info")).status_code == 200
            for method, path in (("POST", "/api/jobs"), ("GET", "/api/jobs"), ("GET", "/info")):
                r = await http.request(method, path, json=job("echo") if method == "POST" else None)
                assert_error(r, 429, "Too many requests")
                assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers
            for _ in range(5):  # probes are never rate-limited
                r = await http.get("/health")
                assert (r.status_code, r.json()) == (200, {"status": "healthy"})
                assert (await http.get("/health/live")).status_code == 200
                assert (await http.get("/health/ready")).status_code == 200
        # The refused submit stored nothing.
        assert await jobs_of_client(node.node.database, client_address) == 1
        async with node.client(other_address(client_address)) as other:
            for _ in range(3):
                assert await listed(other) == []
            assert (await other.get("/api/jobs")).status_code == 429


async def test_a_batch_counts_as_one_request(make_node, client_address):
    config = {**STANDARD_CONFIG, "server": {"rate_limit": {"num_requests": 3, "period": 60}}}
    async with make_node(config) as node, node.client(client_address) as http:
        ids = [a["id"] for a in await submit_batch(http, [job("echo")] * 5)]
        assert await listed(http) == ids
        assert len(await results(http, *ids)) == 5
        assert_error(await http.post("/api/jobs/batch", json=[job("echo")]), 429, "Too many requests")


def proxy_config(*proxies: str) -> dict:
    return {**STANDARD_CONFIG, "server": {"trusted_proxies": list(proxies)}}


def via(chain: str) -> dict[str, str]:
    return {"x-forwarded-for": chain}


def not_allowed(container: str, address: str) -> tuple:
    return 400, "Container not allowed for address", {"container": container, "address": address}


async def test_a_trusted_proxy_names_the_client(make_node, client_address):
    _, _, c, d = client_address.split(".")
    behind = f"10.1.{c}.{d}"  # allowed for "private" (10.1.0.0/16), and this test's own
    async with make_node(proxy_config(f"{client_address}/32", "192.0.2.0/24")) as node:
        async with node.client(client_address) as proxy:
            job_id = await submit(proxy, job("private"), headers=via(behind))
            assert_error(
                await proxy.post("/api/jobs", json=job("private"), headers=via("10.9.9.9")),
                *not_allowed("private", "10.9.9.9"),
            )
            # The nearest untrusted hop is the client; trusted hops are skipped; an
            # IPv4-mapped IPv6 address is its IPv4 address.
            for chain in (f"{behind}, 192.0.2.7", f"198.51.100.1, {behind}, {client_address}", f"::ffff:{behind}"):
                assert_error(
                    await proxy.post("/api/jobs", json=job("local"), headers=via(chain)), *not_allowed("local", behind)
                )
            # An IPv6 client behind the proxy ("private" allows ::2).
            v6_job = await submit(proxy, job("private"), headers=via("::2"))

            assert await listed(proxy) == []  # the proxy itself, without the header
            assert (await proxy.get("/api/jobs", headers=via(behind))).json() == [job_id]
            assert (await proxy.get("/api/jobs", headers=via(f"::ffff:{behind}"))).json() == [job_id]
            assert (await proxy.get("/api/jobs", params={"id": job_id}, headers=via("10.9.9.9"))).json() == []
            r = await proxy.get("/api/jobs", params={"id": v6_job}, headers=via("::2"))
            assert r.json() == [{"id": v6_job, "status": "running", "result": None}]
            # A hop that is not an address ends the walk: the hop that reported it is the client.
            for chain in ("not-an-ip", "x" * 100, f"unknown, {client_address}", f"{behind}:1234"):
                assert_error(
                    await proxy.post("/api/jobs", json=job("private"), headers=via(chain)),
                    *not_allowed("private", client_address),
                )
            own_job = await submit(proxy, headers=via("x" * 100))
            assert await listed(proxy) == [own_job]
        # A peer that is not a trusted proxy cannot name a client.
        untrusted = other_address(client_address)
        async with node.client(untrusted) as http:
            assert_error(
                await http.post("/api/jobs", json=job("private"), headers=via(behind)),
                *not_allowed("private", untrusted),
            )
            assert (await http.get("/api/jobs", headers=via(behind))).json() == []


async def test_forwarded_for_is_ignored_without_trusted_proxies(node, client_address):
    async with node.client(client_address) as http:
        assert_error(
            await http.post("/api/jobs", json=job("private"), headers=via("10.1.2.3")),
            *not_allowed("private", client_address),
        )
        job_id = await submit(http, headers=via("10.1.2.3"))
        assert await listed(http) == [job_id]
        assert (await http.get("/api/jobs", headers=via("10.1.2.3"))).json() == [job_id]
    assert await jobs_of_client(node.node.database, "10.1.2.3") == 0


async def make_unreachable(node: RunningNode, tmp_path: Path) -> None:
    """Point the node's engines at a database that is not there."""
    database = node.node.database
    await database.dispose()
    url = (
        "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
        if database.is_postgresql
        else f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'jobnode.db'}"
    )
    unreachable = Database(url, connect_timeout=2)
    database.writer, database.reader = unreachable.writer, unreachable.reader
    database.direct_pool, database.sqlite_writer = unreachable.direct_pool, unreachable.sqlite_writer


async def test_database_unavailable_is_503(node, database_url, client_address, tmp_path):
    async with sqlite_threads_joined(), node.client(client_address) as http:
        job_id = await submit(http)
        await make_unreachable(node, tmp_path)
        unavailable = {"error": "Database unavailable"}
        for method, path, kwargs in (
            ("POST", "/api/jobs", {"json": job("echo")}),
            ("POST", "/api/jobs/batch", {"json": [job("echo"), job("echo")]}),
            ("GET", "/api/jobs", {}),
            ("GET", "/api/jobs", {"params": {"id": job_id}}),
            ("GET", "/api/jobs", {"params": {"pending": "true", "after": job_id}}),
            ("GET", "/info", {}),
        ):
            r = await http.request(method, path, **kwargs)
            assert (r.status_code, r.json()) == (503, unavailable), (method, path, r.text)
        # Requests the node rejects without the database still answer as usual.
        assert_error(await http.post("/api/jobs", json=job()), 400, "No containers specified")
        r = await http.get("/health")
        assert r.status_code == 503
        assert r.json()["status"] == "unhealthy"
    # A 503 on submit means the job was not accepted.
    database = Database(database_url)
    try:
        assert await jobs_of_client(database, client_address) == 1
    finally:
        await database.dispose()
