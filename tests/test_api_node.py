"""/health, /info, the error shapes of the router, the OpenAPI document and /docs."""

from __future__ import annotations

import re

from app import __version__
from tests.helpers import assert_error, finish, job, submit, submit_batch

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
        assert added["pending"] == {"offchain": before["pending"]["offchain"] + 4, "onchain": before["pending"]["onchain"]}

        await finish(node.node.database, ids[0], "success", [{"container": "echo", "output": {}}])
        await finish(node.node.database, ids[1], "running", [])
        after = await info()
        assert after["pending"] == {"offchain": before["pending"]["offchain"] + 3, "onchain": before["pending"]["onchain"]}


async def test_info_lists_only_ready_containers(make_node, client_address):
    config = {
        "scheduler": {"enabled": False},
        "containers": [
            {"id": "probed", "url": URL, "health_path": "/health", "description": "not up yet"},
            {"id": "plain", "url": URL, "image": "some/image:1", "external": False},
        ],
    }
    async with make_node(config) as node, node.client(client_address) as http:
        r = await http.get("/info")
        assert r.status_code == 200, r.text
        assert r.json()["containers"] == [{"id": "plain", "image": "some/image:1", "external": False, "description": ""}]


async def test_router_errors_are_json_error_bodies(node, client_address):
    async with node.client(client_address) as http:
        for path in ("/nope", "/api", "/api/jobs/x/y/z"):
            assert_error(await http.get(path), 404, "Not found")
        for method, path in (("DELETE", "/health"), ("POST", "/info"), ("PUT", "/api/jobs"), ("PATCH", "/api/jobs/batch")):
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
