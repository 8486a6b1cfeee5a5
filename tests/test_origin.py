"""A browser is no way in (SPEC §10): the Origin × endpoint and Host × endpoint matrices
on a real node, on SQLite and PostgreSQL; ``server.allowed_origins``/``allowed_hosts``."""

from __future__ import annotations

import json

import pytest

from app.config.loading import settings_from_dict
from app.config.values import ConfigError
from tests.conftest import STANDARD_CONFIG
from tests.helpers import assert_error, job, listed, submit

CROSS_ORIGIN = "Cross-origin request refused"
MISDIRECTED = "Misdirected request"
FOREIGN_ORIGINS = (
    "http://evil.example",
    "https://attacker.example:4000",
    "null",
    "http://127.0.0.1.evil.example",
    "http://localhost.evil.example:4000",
    "file://",
    "http://127.0.0.1/path",
    "http://évil.example".encode(),  # not ASCII
    "http://user@localhost",
)
OPERATOR_GETS = ("/api/jobs/{id}", "/api/containers", "/metrics", "/dashboard", "/dashboard/data")
OPERATOR_WRITES = (
    ("DELETE", "/api/jobs/{id}"),
    ("POST", "/api/jobs/{id}/cancel"),
    ("POST", "/api/jobs/{id}/retry"),
    ("POST", "/api/jobs/{id}/webhook"),
)
JOB = json.dumps(job("echo"))


def _state_changing(job_id: str) -> list[tuple[str, str, dict]]:
    """Every state-changing request of the node, with a body it would accept."""
    return [
        ("POST", "/api/jobs", {"json": job("echo")}),
        # A "simple" request: a browser sends it cross-origin without a CORS preflight.
        ("POST", "/api/jobs", {"content": JOB, "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/api/jobs/batch", {"json": [job("echo")]}),
        ("POST", "/api/jobs/stream", {"json": job("echo")}),
        *((method, path.format(id=job_id), {}) for method, path in OPERATOR_WRITES),
    ]


async def _status(http, job_id: str) -> str:
    r = await http.get(f"/api/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()["status"]


async def test_foreign_origin_is_refused_on_every_state_changing_request(make_node, client_address):
    async with make_node(STANDARD_CONFIG) as node, node.client(client_address) as http:
        job_id = await submit(http)
        for origin in FOREIGN_ORIGINS:
            for method, path, kwargs in _state_changing(job_id):
                headers = {**kwargs.pop("headers", {}), "Origin": origin}
                r = await http.request(method, path, headers=headers, **kwargs)
                assert_error(r, 403, CROSS_ORIGIN)
        # Nothing happened: no new job of this client, and the job is still pending.
        assert await listed(http) == [job_id]
        assert await _status(http, job_id) == "pending"
        # Reads of the job API (this client's own jobs) are no browser's way in.
        r = await http.get("/api/jobs", params={"id": job_id}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 200 and r.json()[0]["id"] == job_id
        assert (await http.get("/info", headers={"Origin": "http://evil.example"})).status_code == 200


async def test_foreign_origin_is_refused_on_operator_reads(make_node, client_address):
    async with make_node(STANDARD_CONFIG) as node, node.client(client_address) as http:
        job_id = await submit(http)
        for origin in FOREIGN_ORIGINS:
            for path in OPERATOR_GETS:
                assert_error(await http.get(path.format(id=job_id), headers={"Origin": origin}), 403, CROSS_ORIGIN)
            r = await http.options(f"/api/jobs/{job_id}", headers={"Origin": origin})
            assert_error(r, 403, CROSS_ORIGIN)


async def test_no_origin_and_own_origins_keep_working(make_node, client_address):
    async with make_node(STANDARD_CONFIG) as node, node.client(client_address) as http:
        own = (
            None,
            f"http://127.0.0.1:{node.port}",
            f"http://localhost:{node.port}",
            "https://LOCALHOST",
            f"http://[::1]:{node.port}",
            "http://127.9.9.9:1234",
        )
        for origin in own:
            headers = {} if origin is None else {"Origin": origin}
            job_id = await submit(http, headers=headers)
            for path in OPERATOR_GETS:
                r = await http.get(path.format(id=job_id), headers=headers)
                assert r.status_code == 200, (origin, path, r.text)
            r = await http.post("/api/jobs/batch", json=[job("echo")], headers=headers)
            assert r.status_code == 200 and "id" in r.json()[0], (origin, r.text)
            assert_error(await http.post(f"/api/jobs/{job_id}/retry", headers=headers), 409, "Job is not failed")
            r = await http.post(f"/api/jobs/{job_id}/cancel", headers=headers)
            assert r.status_code == 200 and r.json()["status"] == "cancelled", (origin, r.text)


async def test_foreign_host_is_misdirected_on_operator_endpoints(make_node, client_address):
    async with make_node(STANDARD_CONFIG) as node, node.client(client_address) as http:
        job_id = await submit(http)
        for host in ("attacker.example", f"attacker.example:{node.port}", "127.0.0.1.nip.io", "0.0.0.0"):
            headers = {"Host": host}
            for path in OPERATOR_GETS:
                assert_error(await http.get(path.format(id=job_id), headers=headers), 421, MISDIRECTED)
            for method, path in OPERATOR_WRITES:
                assert_error(await http.request(method, path.format(id=job_id), headers=headers), 421, MISDIRECTED)
            # The job API answers per client and needs no Host check (clients use any name).
            assert (await http.get("/api/jobs", params={"id": job_id}, headers=headers)).status_code == 200
            assert (await http.get("/health", headers=headers)).status_code == 200
        assert await _status(http, job_id) == "pending"
        for host in (
            "localhost",
            f"localhost:{node.port}",
            f"127.0.0.1:{node.port}",
            f"[::1]:{node.port}",
            "127.0.0.2",
            "LOCALHOST.",
        ):
            r = await http.get("/dashboard/data", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)


async def test_allowed_origins_and_hosts_are_honoured(make_node, client_address):
    server = {
        "allowed_origins": ["https://Dash.Example.com:443/"],
        "allowed_hosts": ["node.example.com"],
        "host": "jobs.internal",
    }
    async with make_node({**STANDARD_CONFIG, "server": server}) as node, node.client(client_address) as http:
        for origin in ("https://dash.example.com", "http://node.example.com:8080", "http://jobs.internal:4000"):
            job_id = await submit(http, headers={"Origin": origin})
            r = await http.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": origin})
            assert r.status_code == 200, (origin, r.text)
        for origin in ("http://dash.example.com", "https://dash.example.com:8443", "https://other.example.com"):
            assert_error(await http.post("/api/jobs", json=job("echo"), headers={"Origin": origin}), 403, CROSS_ORIGIN)
        for host in ("node.example.com", "NODE.example.com:443", "jobs.internal:4000", "localhost"):
            assert (await http.get("/dashboard/data", headers={"Host": host})).status_code == 200, host
        # An allowed origin's host is not thereby a host of the node.
        assert_error(await http.get("/metrics", headers={"Host": "dash.example.com"}), 421, MISDIRECTED)


async def test_any_interface_means_loopback_and_allowed_hosts(make_node, client_address):
    server = {"host": "0.0.0.0", "allowed_hosts": ["node.example.com"]}
    async with make_node({**STANDARD_CONFIG, "server": server}) as node, node.client(client_address) as http:
        assert_error(await http.get("/api/containers", headers={"Host": "0.0.0.0:4000"}), 421, MISDIRECTED)
        for host in ("node.example.com", "localhost", "127.0.0.1"):
            assert (await http.get("/api/containers", headers={"Host": host})).status_code == 200, host
        assert_error(
            await http.post("/api/jobs", json=job("echo"), headers={"Origin": "http://0.0.0.0:4000"}), 403, CROSS_ORIGIN
        )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("allowed_origins", "evil.example"),
        ("allowed_origins", "http://x.example/path"),
        ("allowed_origins", "ftp://x.example"),
        ("allowed_origins", "http://x.example:99999"),
        ("allowed_origins", "*"),
        ("allowed_hosts", "http://x.example"),
        ("allowed_hosts", "x.example:80"),
        ("allowed_hosts", "x.example/"),
        ("allowed_hosts", ""),
    ],
)
def test_invalid_allowed_origins_and_hosts_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"server\.{key}\[1\]"):
        settings_from_dict(
            {"server": {key: ["localhost" if key == "allowed_hosts" else "http://localhost", value]}}, environ={}
        )


def test_allowed_origins_and_hosts_are_normalised():
    server = settings_from_dict(
        {
            "server": {
                "allowed_origins": ["HTTPS://Dash.Example.com:443/", "http://[::1]:8080", "http://x.example:80"],
                "allowed_hosts": ["Node.Example.com.", "[::1]", "10.0.0.1"],
            }
        },
        environ={},
    ).server
    assert server.allowed_origins == ["https://dash.example.com", "http://[::1]:8080", "http://x.example"]
    assert server.allowed_hosts == ["node.example.com", "::1", "10.0.0.1"]


async def test_the_openapi_document_lists_the_refusals(node, client_address):
    async with node.client(client_address) as http:
        paths = (await http.get("/docs/openapi.json")).json()["paths"]

    def messages(path: str, method: str, status: str) -> list[str]:
        content = paths[path][method]["responses"][status]["content"]["application/json"]
        return [example["value"]["error"] for example in content["examples"].values()]

    for path in ("/api/jobs", "/api/jobs/batch", "/api/jobs/stream"):
        assert CROSS_ORIGIN in messages(path, "post", "403"), path
    for path, method in (
        ("/api/jobs/{job_id}", "get"),
        ("/api/jobs/{job_id}/cancel", "post"),
        ("/api/containers", "get"),
        ("/metrics", "get"),
        ("/dashboard/data", "get"),
    ):
        assert CROSS_ORIGIN in messages(path, method, "403"), path
        assert messages(path, method, "421") == [MISDIRECTED], path
