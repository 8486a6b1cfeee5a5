"""The error catalogue (``app/errors.py``) is the one place an error is said: the OpenAPI
document, the README and the code agree with it, and a request gets exactly its body."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from app import errors as catalogue
from app.config.loading import settings_from_dict
from app.errors import CATALOGUE, ErrorSpec
from app.http.app import create_app
from app.http.openapi import JOB_REQUEST
from app.node import Node
from app.storable import DEFAULT_MAX_DEPTH
from tests.helpers import job

ROOT = Path(__file__).resolve().parent.parent

#: Answers no endpoint documents: Litestar's for a route that does not exist or a method
#: it does not take, a 500, and what the HTTP server refuses before routing.
NOT_IN_OPENAPI = {
    catalogue.UNAUTHORIZED,
    catalogue.FORBIDDEN,
    catalogue.NOT_FOUND,
    catalogue.METHOD_NOT_ALLOWED,
    catalogue.INTERNAL_ERROR,
    *catalogue.WIRE,
}
#: The README says "Every error body is {"error", "params"?}" once for these.
NOT_IN_README = {
    catalogue.BAD_REQUEST,
    catalogue.UNAUTHORIZED,
    catalogue.FORBIDDEN,
    catalogue.NOT_FOUND,
    catalogue.METHOD_NOT_ALLOWED,
    catalogue.INTERNAL_ERROR,
}


def _openapi_document() -> dict[str, Any]:
    """``/docs/openapi.json`` of an app with no services behind it: the document needs none."""
    settings = settings_from_dict({"database": {"url": "sqlite+aiosqlite:///unused.db"}})
    names = Node(settings).app().dependencies  # the very services a node injects, none of them used
    with TestClient(create_app(settings.server, dict.fromkeys(names))) as client:
        response = client.get("/docs/openapi.json")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


def _documented() -> list[tuple[str, str, int, str, str]]:
    """(path, method, status, message, response description) of every error example."""
    found = []
    for path, item in _openapi_document()["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items():
                if not status.startswith(("4", "5")):
                    continue
                examples = response["content"]["application/json"].get("examples", {})
                for example in examples.values():
                    found.append((path, method, int(status), example["value"]["error"], response["description"]))
    return found


def test_every_documented_error_is_a_catalogue_entry_under_its_status() -> None:
    documented = _documented()
    assert documented
    for path, method, status, message, description in documented:
        assert message in CATALOGUE, (path, method, message)
        assert CATALOGUE[message].status == status, (path, method, message, status)
        assert f'"{message}"' in description, (path, method, description)


def test_every_catalogue_entry_an_endpoint_answers_is_documented() -> None:
    documented = {message for *_, message, _ in _documented()}
    expected = {spec.message for spec in CATALOGUE.values() if spec not in NOT_IN_OPENAPI}
    assert expected - documented == set()
    assert documented & {spec.message for spec in NOT_IN_OPENAPI} == set()


def test_the_documented_errors_of_an_endpoint_are_those_it_raises() -> None:
    by_operation: dict[tuple[str, str], list[str]] = {}
    for path, method, _, message, _ in _documented():
        by_operation.setdefault((path, method), []).append(message)
    messages = by_operation[("/api/jobs/{job_id}/cancel", "post")]
    assert catalogue.JOB_ALREADY_FINISHED.message in messages
    assert catalogue.JOB_NOT_FAILED.message not in messages
    stream = by_operation[("/api/jobs/stream", "post")]
    assert [m for m in stream if CATALOGUE[m].status == 400] == [
        *(spec.message for spec in JOB_REQUEST if spec.status == 400),
        catalogue.STREAM_NO_SUBSCRIPTIONS.message,
        catalogue.STREAM_NO_WEBHOOKS.message,
        catalogue.STREAM_ONE_CONTAINER.message,
    ]


# -- README ------------------------------------------------------------------------


def _readme() -> str:
    """The README with its line breaks folded, so that a phrase wrapped over two lines matches."""
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _keys(text: str) -> tuple[str, ...]:
    """The keys a README cell or span names: ``{"limit", "size"}``, ``{"reason": "…"}``."""
    return tuple(re.findall(r'"(\w+)"\s*[:,}]', text))


def test_the_readme_table_of_submit_errors_is_the_catalogue_in_its_order() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("Errors of `POST /api/jobs` (400), checked in this order:", 1)[1].strip().split("\n\n")[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    listed = []
    for row in rows:
        error_cell, params_cell = (cell.strip() for cell in row.strip("|").split("|", 1))
        message = error_cell.strip("`")
        assert message in CATALOGUE, row
        spec = CATALOGUE[message]
        assert spec.status == 400, row
        assert _keys(params_cell.split("}")[0] + "}") == spec.params if spec.params else params_cell == "—", row
        listed.append(spec)
    assert listed == [spec for spec in JOB_REQUEST if spec.status == 400]


def test_every_error_body_the_readme_shows_is_a_catalogue_entry() -> None:
    readme = _readme()
    shown = re.findall(r'(?:(\d{3}) )?`\{"error": "([^"]+)"(?:, "params": (\{[^}]*\}))?\}`', readme)
    assert len(shown) > 10
    for status, message, params in shown:
        assert message in CATALOGUE, message
        spec = CATALOGUE[message]
        assert not status or int(status) == spec.status, (status, message)
        assert not params or _keys(params) == spec.params, (message, params)


def test_the_errors_the_readme_names_have_the_catalogues_status_and_params() -> None:
    readme = _readme()
    named = re.findall(r'(?:\b(\d{3}) )?`([A-Z][^`{}"]+)`(?: `(\{[^`]*\})`)?', readme)
    checked = 0
    for status, message, params in named:
        if message not in CATALOGUE:
            assert not status, f"the README names a {status} `{message}` that the catalogue does not have"
            continue
        spec = CATALOGUE[message]
        assert not status or int(status) == spec.status, (status, message)
        assert not params or _keys(params) == spec.params, (message, params)
        checked += 1
    assert checked > 10


def test_the_readme_mentions_every_error_a_client_can_meet() -> None:
    readme = _readme()
    for spec in CATALOGUE.values():
        if spec not in NOT_IN_README:
            assert f"`{spec.message}`" in readme or f'"error": "{spec.message}"' in readme, spec


def test_the_readme_quotes_the_reasons_as_the_catalogue_words_them() -> None:
    readme = _readme()
    for subject in ("data", "output"):
        assert f"`{subject} {catalogue.NUL_REFUSED}`" in readme
        assert f"`{subject} {catalogue.nested_too_deep(DEFAULT_MAX_DEPTH)}`" in readme
        assert f"`{subject} {catalogue.could_not_be_stored('…')}`" in readme


# -- the code ----------------------------------------------------------------------


def _strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are values: not docstrings nor other bare string statements."""
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
    ]


def test_no_client_facing_text_is_written_outside_the_catalogue() -> None:
    texts = {spec.message for spec in CATALOGUE.values()} | {catalogue.NUL_REFUSED}
    # The fixed words of the templates, as they appear in an f-string's constant parts.
    fragments = ("is nested deeper than", "could not be stored:", "surrogate pair without")
    copies = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if path == ROOT / "app" / "errors.py":
            continue
        for node in _strings(ast.parse(path.read_text(), str(path))):
            if node.value in texts or any(fragment in node.value for fragment in fragments):
                copies.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert copies == []


def test_the_scan_finds_a_copy() -> None:
    """The check above can fail: a literal message is found, a docstring is not."""
    source = '"""Answers "Job not found"."""\nx = "Job not found"\n'
    assert [node.value for node in _strings(ast.parse(source))] == ["Job not found"]


def test_messages_are_unique_and_params_are_keys() -> None:
    specs = [value for value in vars(catalogue).values() if isinstance(value, ErrorSpec)]
    assert len(specs) == len(CATALOGUE)
    for spec in specs:
        assert 400 <= spec.status < 600, spec
        assert all(re.fullmatch(r"[a-z_]+", key) for key in spec.params), spec


# -- real requests -----------------------------------------------------------------

_ID = str(uuid.UUID(int=7))

#: (entry, method, path, request keywords, params of the answer).
REQUESTS: list[tuple[ErrorSpec, str, str, dict[str, Any], dict[str, Any] | None]] = [
    (catalogue.NO_CONTAINERS, "POST", "/api/jobs", {"json": {"containers": [], "data": {}}}, None),
    (catalogue.CONTAINER_NOT_SUPPORTED, "POST", "/api/jobs", {"json": job("nope")}, {"container": "nope"}),
    (catalogue.FIRST_CONTAINER_NOT_EXTERNAL, "POST", "/api/jobs", {"json": job("inner")}, {"first_container": "inner"}),
    (catalogue.EXPECTED_LIST, "POST", "/api/jobs/batch", {"json": {}}, None),
    (catalogue.STREAM_ONE_CONTAINER, "POST", "/api/jobs/stream", {"json": job("echo", "echo")}, None),
    (catalogue.INVALID_JOB_ID, "GET", "/api/jobs", {"params": {"id": "x"}}, {"id": "x"}),
    (catalogue.INVALID_PARAMETER, "GET", "/api/jobs", {"params": {"limit": "0"}}, {"name": "limit", "value": "0"}),
    (catalogue.INVALID_JOB_ID, "GET", "/api/jobs/not-an-id", {}, {"id": "not-an-id"}),
    (catalogue.JOB_NOT_FOUND, "GET", f"/api/jobs/{_ID}", {}, None),
    (catalogue.JOB_NOT_FOUND, "POST", f"/api/jobs/{_ID}/retry", {}, None),
    (
        catalogue.CROSS_ORIGIN,
        "POST",
        "/api/jobs",
        {"json": job("echo"), "headers": {"Origin": "https://x.example"}},
        None,
    ),
    (catalogue.MISDIRECTED, "GET", "/api/containers", {"headers": {"Host": "x.example"}}, None),
    (catalogue.METHOD_NOT_ALLOWED, "PUT", "/api/jobs", {}, None),
    (catalogue.NOT_FOUND, "GET", "/nope", {}, None),
]


async def test_a_request_gets_exactly_the_catalogue_entry(node, client_address) -> None:
    async with node.client(client_address) as http:
        for spec, method, path, kwargs, params in REQUESTS:
            response = await http.request(method, path, **kwargs)
            assert response.status_code == spec.status, (spec, response.text)
            assert response.headers["content-type"].startswith("application/json"), spec
            assert response.json() == spec.body(params), spec
        response = await http.put("/api/jobs")
        assert response.headers["allow"] == "GET, POST"


async def test_the_http_servers_refusal_is_the_catalogue_entry(node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GARBAGE\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {catalogue.INVALID_HTTP_REQUEST.status} ".encode()), head
    assert json.loads(body) == catalogue.INVALID_HTTP_REQUEST.body()


@pytest.mark.parametrize("spec", [catalogue.JOB_ALREADY_FINISHED, catalogue.DATABASE_UNAVAILABLE])
def test_body_and_error_carry_the_entry(spec: ErrorSpec) -> None:
    error = spec.error({"k": 1}, {"H": "v"})
    assert (error.spec, error.message, error.params, error.headers) == (spec, spec.message, {"k": 1}, {"H": "v"})
    assert error.body() == {"error": spec.message, "params": {"k": 1}}
    assert spec.body() == {"error": spec.message}
