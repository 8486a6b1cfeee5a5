"""Who may use the operator endpoints (token or loopback), ``GET /api/containers``, and
the OpenAPI document's error shapes; on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.conftest import STANDARD_CONFIG
from tests.helpers import assert_error, job, submit
from tests.operator_support import TOKEN, bearer, container, scheduled, wait_for
from tests.support import wait_finished

OPERATOR_GETS = ("/api/jobs/{id}", "/api/containers", "/metrics", "/dashboard", "/dashboard/data")
OPERATOR_WRITES = (
    ("DELETE", "/api/jobs/{id}"),
    ("POST", "/api/jobs/{id}/cancel"),
    ("POST", "/api/jobs/{id}/retry"),
    ("POST", "/api/jobs/{id}/webhook"),
)


def _with_token(**server: object) -> dict:
    return {**STANDARD_CONFIG, "server": {"operator_token": TOKEN, **server}}


async def test_token_is_required_when_set(make_node, client_address):
    async with make_node(_with_token()) as node, node.client(client_address) as http:
        job_id = await submit(http)  # the compatible surface needs no token
        assert (await http.get("/api/jobs", params={"id": job_id})).status_code == 200
        assert (await http.get("/info")).status_code == 200
        for path in OPERATOR_GETS:
            path = path.format(id=job_id)
            r = await http.get(path)
            assert_error(r, 401, "Operator token required")
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert_error(await http.get(path, headers=bearer("wrong")), 401, "Invalid operator token")
            assert_error(
                await http.get(path, headers={"Authorization": f"Basic {TOKEN}"}), 401, "Invalid operator token"
            )
            assert (await http.get(path, headers=bearer())).status_code == 200, path
        for method, path in OPERATOR_WRITES:
            assert_error(await http.request(method, path.format(id=job_id)), 401, "Operator token required")
        assert (await http.post(f"/api/jobs/{job_id}/cancel", headers=bearer())).json()["status"] == "cancelled"
    # A token does not need loopback: any address with the token is an operator.
    config = _with_token(trusted_proxies=["127.0.0.0/8"])
    async with make_node(config) as node, node.client(client_address) as http:
        remote = {"X-Forwarded-For": "203.0.113.9"}
        assert (await http.get("/api/containers", headers={**remote, **bearer()})).status_code == 200
        assert_error(await http.get("/api/containers", headers=remote), 401, "Operator token required")


async def test_dashboard_token_becomes_a_cookie_for_reads_only(make_node, client_address):
    async with make_node(_with_token()) as node, node.client(client_address) as http:
        job_id = await submit(http)
        assert_error(await http.get("/dashboard", params={"token": "wrong"}), 401, "Invalid operator token")
        assert_error(await http.get("/dashboard/data", params={"token": TOKEN}), 401, "Operator token required")
        r = await http.get("/dashboard", params={"token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        cookie = r.headers["set-cookie"]
        assert "jobnode_operator=" in cookie and TOKEN not in cookie
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert http.cookies.get("jobnode_operator")
        page = await http.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert (await http.get("/dashboard/data")).status_code == 200
        assert (await http.get(f"/api/jobs/{job_id}")).status_code == 200
        # A write needs the header, not the cookie (no cross-site request can cancel a job).
        assert_error(await http.delete(f"/api/jobs/{job_id}"), 401, "Operator token required")
        http.cookies.set("jobnode_operator", "forged")
        assert_error(await http.get("/dashboard/data"), 401, "Invalid operator token")


async def test_without_token_loopback_only(make_node, client_address):
    config = {**STANDARD_CONFIG, "server": {"trusted_proxies": ["127.0.0.0/8"]}}
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http)
        for address in (client_address, "::1"):
            async with node.client(address) as local:
                for path in OPERATOR_GETS:
                    assert (await local.get(path.format(id=job_id))).status_code == 200, (address, path)
        remote = {"X-Forwarded-For": "203.0.113.7"}
        for path in OPERATOR_GETS:
            assert_error(
                await http.get(path.format(id=job_id), headers=remote),
                403,
                "Operator endpoints answer loopback clients only",
                {"address": "203.0.113.7"},
            )
        for method, path in OPERATOR_WRITES:
            assert_error(
                await http.request(method, path.format(id=job_id), headers=remote),
                403,
                "Operator endpoints answer loopback clients only",
                {"address": "203.0.113.7"},
            )
        # The token header is not a way around it when no token is configured.
        assert (await http.get("/api/containers", headers={**remote, **bearer()})).status_code == 403
        # The remote client keeps the compatible surface.
        remote_job = await submit(http, headers=remote)
        assert (await http.get("/api/jobs", headers=remote)).json() == [remote_job]


async def test_containers_live_state(make_node, host_service, client_address):
    echo, fail = host_service("echo"), host_service("fail")
    # Ids of this test only: the database is shared, and jobs other tests left pending
    # for "echo" would be run here too.
    ok, bad = f"echo-{client_address}", f"fail-{client_address}"
    config = scheduled(
        container(ok, echo.url, concurrency=4),
        container(bad, fail.url),
        container("probed", "http://127.0.0.1:9", health_path="/health", startup_timeout=0.2),
    )
    async with make_node(config) as node, node.client(client_address) as http:
        ids = [await submit(http, job(ok, data={"i": i})) for i in range(5)]
        ids.append(await submit(http, job(bad)))
        await wait_finished(http, ids)
        r = await http.get("/api/containers")
        assert r.status_code == 200, r.text
        states = {c["id"]: c for c in r.json()}
        assert list(states) == [ok, bad, "probed"]
        e = states[ok]
        assert e["state"] == "ready" and e["ready"] is True and e["managed"] is False
        assert (e["done"], e["failed"], e["in_flight"], e["restarts"], e["concurrency"]) == (5, 0, 0, 0, 4)
        assert e["last_error"] is None and e["url"] == echo.url
        assert e["samples"] == 5 and 0 < e["mean_seconds"] <= e["p95_seconds"] < 5
        f = states[bad]
        assert (f["done"], f["failed"], f["samples"]) == (0, 1, 1) and f["p95_seconds"] > 0
        p = states["probed"]
        assert p["ready"] is False and p["state"] in ("starting", "failed") and p["samples"] == 0
        assert p["mean_seconds"] is None and p["p95_seconds"] is None
        await wait_for(lambda: _last_error(http, "probed"))


async def _last_error(http, cid: str) -> bool:
    states = {c["id"]: c for c in (await http.get("/api/containers")).json()}
    return bool(states[cid]["last_error"])


async def test_openapi_lists_every_endpoint_with_its_error_bodies(node, client_address):
    async with node.client(client_address) as http:
        document = (await http.get("/docs/openapi.json")).json()
    paths = document["paths"]
    expected = {
        ("/api/jobs/{job_id}", "get"): {"400", "401", "403", "404", "429", "503"},
        ("/api/jobs/{job_id}", "delete"): {"400", "401", "403", "404", "409", "429", "503"},
        ("/api/jobs/{job_id}/cancel", "post"): {"400", "401", "403", "404", "409", "429", "503"},
        ("/api/jobs/{job_id}/retry", "post"): {"400", "401", "403", "404", "409", "429", "503"},
        ("/api/containers", "get"): {"401", "403", "429"},
        ("/metrics", "get"): {"401", "403"},
        ("/dashboard", "get"): {"401", "403"},
        ("/dashboard/data", "get"): {"401", "403"},
        ("/api/jobs", "post"): {"400", "413", "429", "503"},
        ("/api/jobs", "get"): {"400", "429", "503"},
        ("/api/jobs/batch", "post"): {"400", "413", "429", "503"},
        ("/api/jobs/stream", "post"): {"400", "413", "429", "503"},
        ("/info", "get"): {"429", "503"},
        ("/health", "get"): {"503"},
        ("/resources", "get"): {"429"},
    }
    for (path, method), codes in expected.items():
        operation = paths[path][method]
        assert codes <= set(operation["responses"]), (path, method, sorted(operation["responses"]))
        for code in codes - {"503"} if path == "/health" else codes:
            schema = operation["responses"][code]["content"]["application/json"]["schema"]
            ref = schema.get("$ref", "")
            assert ref.endswith("/ErrorBody"), (path, method, code, schema)
    assert set(document["components"]["schemas"]["ErrorBody"]["required"]) == {"error"}
    examples = paths["/api/jobs/{job_id}/retry"]["post"]["responses"]["409"]["content"]["application/json"]
    assert {"error": "Job is not failed"} in [e["value"] for e in examples["examples"].values()]
