"""/health, /info, the error shapes of the router, the OpenAPI document and /docs."""

from __future__ import annotations

import asyncio
import re
import time

from app import __version__
from app.containers.runtime import ContainerRuntime
from tests.conftest import STANDARD_URL
from tests.helpers import assert_error, finish, job, submit, submit_batch
from tests.support import PortListener, wait_finished

URL = "http://127.0.0.1:9"

STANDARD_CONTAINERS = [
    {"id": "echo", "image": "", "external": True, "description": "returns its input"},
    {"id": "inner", "image": "", "external": False, "description": ""},
    {"id": "prover", "image": "", "external": True, "description": ""},
    {"id": "private", "image": "", "external": True, "description": ""},
    {"id": "local", "image": "", "external": True, "description": ""},
]


async def test_health(node, client_address):
    async with node.client(client_address) as http:
        r = await http.get("/health")
        assert (r.status_code, r.json()) == (200, {"status": "healthy"})


async def test_info_shape_and_pending_counts(node, client_address):
    async with node.client(client_address) as http:

        async def info():
            r = await http.get("/info")
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"version", "containers", "pending", "chain"}
            assert set(body["pending"]) == {"offchain", "onchain"}
            return body

        before = await info()
        assert before["version"] == __version__
        assert before["containers"] == STANDARD_CONTAINERS
        assert before["chain"] == {"enabled": False, "address": ""}

        # The database is shared by the tests: measure what this test adds.
        ids = [await submit(http), await submit(http)]
        ids += [a["id"] for a in await submit_batch(http, [job("echo"), job("nope"), job("echo")]) if "id" in a]
        await http.post("/api/jobs", json=job("nope"))
        added = await info()
        assert added["pending"] == {
            "offchain": before["pending"]["offchain"] + 4,
            "onchain": before["pending"]["onchain"],
        }

        await finish(node.node.database, ids[0], "success", [{"container": "echo", "output": {}}])
        await finish(node.node.database, ids[1], "running", [])
        after = await info()
        assert after["pending"] == {
            "offchain": before["pending"]["offchain"] + 3,
            "onchain": before["pending"]["onchain"],
        }


async def test_info_lists_only_ready_containers(make_node, client_address):
    config = {
        "scheduler": {"enabled": False},
        "containers": [
            {"id": "probed", "url": URL, "health_path": "/health", "description": "not up yet"},
            {"id": "plain", "url": STANDARD_URL, "image": "some/image:1", "external": False},
            {"id": "down", "url": URL},  # nothing listens: its TCP probe fails
        ],
    }
    async with make_node(config) as node, node.client(client_address) as http:
        r = await http.get("/info")
        assert r.status_code == 200, r.text
        assert r.json()["containers"] == [
            {"id": "plain", "image": "some/image:1", "external": False, "description": ""}
        ]


async def _readiness(http) -> tuple[list[str], dict[str, str], dict[str, tuple[str, str | None]]]:
    """What each surface says: /info's ids, /health's not-ready section, /api/containers."""
    info = [c["id"] for c in (await http.get("/info")).json()["containers"]]
    health = (await http.get("/health")).json()
    assert health["status"] == "healthy", health  # a container down does not make the node unhealthy
    live = {c["id"]: (c["state"], c["last_error"]) for c in (await http.get("/api/containers")).json()}
    return info, health.get("containers", {}), live


async def test_unmanaged_container_without_health_path_is_probed_by_tcp(
    make_node, client_address, monkeypatch, host_service
):
    """Ready while its url's port accepts connections, not ready (and why) while it does not,
    both ways; a job for it while it is down is called anyway and fails at once."""
    monkeypatch.setattr(ContainerRuntime, "probe_interval", 0.1)
    port = await PortListener().open()
    gone = PortListener()  # never opened: nothing listens there
    echo = host_service("echo")
    # Ids of this test only: other tests' jobs in the shared database are left alone.
    flips, down, up = (f"{name}-{client_address}" for name in ("flips", "down", "up"))
    config = {
        "scheduler": {"poll_interval": 0.1},
        "containers": [
            {"id": flips, "url": port.url},
            {"id": down, "url": gone.url, "startup_timeout": 30},
            {"id": up, "url": echo.url},
        ],
    }
    refused = f"failed: 127.0.0.1:{gone.port}: connection refused"
    try:
        async with make_node(config) as node, node.client(client_address) as http:
            info, not_ready, live = await _readiness(http)  # right from the first request
            assert info == [flips, up]
            assert not_ready == {down: refused}
            assert live[down] == ("failed", f"127.0.0.1:{gone.port}: connection refused")
            assert live[flips] == ("ready", None) and live[up] == ("ready", None)

            await port.close()
            await _until(
                http,
                lambda r: (
                    r[0] == [up]
                    and set(r[1]) == {flips, down}
                    and r[1][flips] == f"failed: 127.0.0.1:{port.port}: connection refused"
                    and r[2][flips][0] == "failed"
                ),
            )
            await port.open()
            await _until(http, lambda r: r[0] == [flips, up] and set(r[1]) == {down} and r[2][flips] == ("ready", None))

            started = time.monotonic()
            job_id = await submit(http, job(down))
            result = (await wait_finished(http, [job_id], timeout=20))[job_id]
            assert result["status"] == "failed" and result["result"] == {
                "container": down,
                "error": "connection refused",
            }
            assert time.monotonic() - started < 10  # called at once, not held for its startup_timeout (30 s)
            ok = await submit(http, job(up))
            assert (await wait_finished(http, [ok]))[ok]["status"] == "success"
    finally:
        await port.close()


async def _until(http, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition(seen := await _readiness(http)):
        assert time.monotonic() < deadline, f"readiness did not change: {seen}"
        await asyncio.sleep(0.05)


async def test_router_errors_are_json_error_bodies(node, client_address):
    async with node.client(client_address) as http:
        for path in ("/nope", "/api", "/api/jobs/x/y/z"):
            assert_error(await http.get(path), 404, "Not found")
        for method, path in (
            ("DELETE", "/health"),
            ("POST", "/info"),
            ("PUT", "/api/jobs"),
            ("PATCH", "/api/jobs/batch"),
        ):
            r = await http.request(method, path)
            assert_error(r, 405, "Method not allowed")


async def test_openapi_document(node, client_address):
    async with node.client(client_address) as http:
        r = await http.get("/docs/openapi.json")
        assert r.status_code == 200, r.text
        document = r.json()
        assert document["openapi"].startswith("3.")
        for path in ("/api/jobs", "/api/jobs/batch", "/health", "/info"):
            assert path in document["paths"], (path, sorted(document["paths"]))
        assert {"get", "post"} <= set(document["paths"]["/api/jobs"])


OPERATOR_OPERATIONS = {
    ("get", "/api/jobs/{job_id}"),
    ("delete", "/api/jobs/{job_id}"),
    ("post", "/api/jobs/{job_id}/cancel"),
    ("post", "/api/jobs/{job_id}/retry"),
    ("post", "/api/jobs/{job_id}/webhook"),
    ("get", "/api/containers"),
    ("get", "/metrics"),
    ("get", "/dashboard"),
    ("get", "/dashboard/data"),
}


async def test_openapi_document_describes_bodies_parameters_statuses_and_security(make_node, client_address):
    """What a client generator or a fuzzer reads: request bodies, query and path
    parameters with their formats and the node's configured bounds, the status enums,
    the error shape of every 4xx, and the operator token as a bearer scheme."""
    async with make_node({"server": {"max_wait": 7, "max_ids": 12}}) as node, node.client(client_address) as http:
        document = (await http.get("/docs/openapi.json")).json()
    paths, schemas = document["paths"], document["components"]["schemas"]

    job_request = {"$ref": "#/components/schemas/JobRequest"}
    for path in ("/api/jobs", "/api/jobs/stream"):
        assert paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"] == job_request, path
    batch = paths["/api/jobs/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch == {"type": "array", "items": job_request}
    request_schema = schemas["JobRequest"]
    assert set(request_schema["required"]) == {"containers", "data"}
    assert request_schema["properties"]["containers"] == {"type": "array", "items": {"type": "string"}}
    assert request_schema["properties"]["data"]["type"] == "object"
    assert request_schema["properties"]["requires_proof"]["type"] == "boolean"

    read = {p["name"]: p for p in paths["/api/jobs"]["get"]["parameters"]}
    assert set(read) == {"id", "intermediate", "wait", "pending", "limit", "after"}
    assert all(p["in"] == "query" and not p["required"] for p in read.values())
    assert read["id"]["schema"]["type"] == "array" and read["id"]["schema"]["items"]["format"] == "uuid"
    assert read["id"]["schema"]["maxItems"] == 12  # server.max_ids of this node
    assert (read["wait"]["schema"]["type"], read["wait"]["schema"]["minimum"], read["wait"]["schema"]["maximum"]) == (
        "number",
        0,
        7,
    )  # server.max_wait of this node
    assert (
        read["limit"]["schema"]["type"],
        read["limit"]["schema"]["minimum"],
        read["limit"]["schema"]["maximum"],
    ) == ("integer", 1, 100_000)
    assert read["after"]["schema"]["format"] == "uuid"
    assert read["intermediate"]["schema"]["type"] == read["pending"]["schema"]["type"] == "boolean"
    assert [p["name"] for p in paths["/resources"]["get"]["parameters"]] == ["model_id"]
    assert [p["name"] for p in paths["/dashboard"]["get"]["parameters"]] == ["token"]
    for method, path in OPERATOR_OPERATIONS:
        if "{job_id}" in path:
            (parameter,) = paths[path][method]["parameters"]
            assert (parameter["name"], parameter["in"], parameter["required"], parameter["schema"]["format"]) == (
                "job_id",
                "path",
                True,
                "uuid",
            ), (method, path)

    assert schemas["JobResult"]["properties"]["status"]["enum"] == ["running", "success", "failed"]
    assert (
        schemas["JobResult"]["properties"]["id"]["format"] == schemas["JobId"]["properties"]["id"]["format"] == "uuid"
    )
    assert schemas["JobDetail"]["properties"]["status"]["enum"] == [
        "pending",
        "running",
        "success",
        "failed",
        "cancelled",
    ]
    assert schemas["JobDetail"]["properties"]["api_status"]["enum"] == ["running", "success", "failed"]
    # Every call of a step, and a step waiting for its retry (a container's ``retry``).
    assert {"retries", "waiting"} <= set(schemas["JobDetail"]["properties"])
    assert set(schemas["StepDetail"]["properties"]["attempts"]["items"].values()) == {
        "#/components/schemas/AttemptDetail"
    }
    assert set(schemas["AttemptDetail"]["required"]) >= {"attempt", "error", "reason", "retry_at"}
    assert schemas["Health"]["properties"]["status"]["enum"] == ["healthy", "unhealthy"]

    assert document["components"]["securitySchemes"]["operator"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "description": "",
    }
    operations = {(method, path): operation for path, item in paths.items() for method, operation in item.items()}
    assert OPERATOR_OPERATIONS <= set(operations)
    for key, operation in operations.items():
        expected = [{"operator": []}] if key in OPERATOR_OPERATIONS else None
        assert operation.get("security") == expected, key
        if key in OPERATOR_OPERATIONS:
            assert {"401", "403"} <= set(operation["responses"]), key
        for status, response in operation["responses"].items():
            if status.startswith("4"):  # the error shape, with the messages as examples
                content = response["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (key, status)
                assert all(isinstance(e["value"]["error"], str) for e in content["examples"].values()), (key, status)
    error_body = schemas["ErrorBody"]
    assert error_body["required"] == ["error"]
    assert error_body["properties"]["error"] == {"type": "string"}
    assert error_body["properties"]["params"] == {"oneOf": [{"type": "object", "additionalProperties": {}}]}


async def test_the_docs_page_loads_everything_from_the_node(node, client_address):
    """/docs works offline: every script, stylesheet and icon it names is a path of the
    node, and each answers 200 with its content type (no CDN, SPEC §11)."""
    expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    async with node.client(client_address) as http:
        for page in ("/docs", "/docs/swagger"):
            r = await http.get(page)
            assert r.status_code == 200, r.text
            assert "SwaggerUIBundle(" in r.text
            assert re.findall(r"https?://[^\s'\"<>]+", r.text) == []  # not even a link
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
            assert {url.rsplit(".", 1)[-1] for url in urls} == {"js", "css", "png"}, urls
            for url in urls:
                assert url.startswith("/docs/assets/"), f"{page} loads {url} from elsewhere"
                asset = await http.get(url)
                assert asset.status_code == 200, (url, asset.status_code)
                assert expected["." + url.rsplit(".", 1)[-1]] in asset.headers["content-type"], (url, asset.headers)
                assert len(asset.content) > 500, url
        bundle = await http.get("/docs/assets/swagger-ui-bundle.js")
        assert b"SwaggerUIBundle" in bundle.content
        assert_error(await http.get("/docs/assets/nothing-here.js"), 404, "Not found")
