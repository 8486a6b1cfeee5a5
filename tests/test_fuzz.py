"""The node under fuzzing (issue 13, item 7): no request makes it answer 5xx.

A real node (``jobnode serve``, its own process, a fresh database of each kind) is
sent, for every operation of its own OpenAPI document:

- schemathesis's generated cases (valid and invalid parameters and bodies), a bounded
  and derandomized number per operation, so CI stays within a few minutes and is stable;
- a hand list of nasty bodies and query strings: NUL in keys and values, nesting 100 /
  1,000 / 10,000 deep, ``1e400`` and a 400-digit integer, lone surrogates, RTL /
  zero-width / emoji text, huge strings, wrong JSON types, wrong content types.

Every answer must be below 500, every 4xx a JSON ``{"error": str, "params"?: object}``,
and every answer to a generated case as the document says (status, schema). The node has
an operator token, sent with every request (operator endpoints are fuzzed too) and left
out in a second pass over the operator endpoints (401 in the error shape). It has no rate
limit: a 429 fails the run.

Requests the HTTP server itself refuses (a target over 64 KiB, a Content-Length that is
not a number) are answered in the error shape too (``app.http.wire``), so they are held
to it like every other answer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import BACKENDS
from tests.support import HostService, NodeProcess, create_pg_database, drop_pg_database

pytestmark = pytest.mark.slow

TOKEN = "fuzz-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Generated cases per operation and generation mode (positive, negative): 15 operations,
#: 2 modes, 2 databases; without the token (8 operator operations refusing at once), fewer.
MAX_EXAMPLES = 12
MAX_EXAMPLES_ANONYMOUS = 4

Query = list[tuple[str, str]]
#: The request target httptools takes (``app.http.wire`` answers past it in the error shape).
URL_LIMIT = 65_536


@dataclass(frozen=True)
class Sent:
    """One request of the hand list; ``label`` names it in failures."""

    label: str
    method: str
    template: str  # the path as documented
    path: str
    params: Query = field(default_factory=list)
    body: bytes | None = None
    headers: dict[str, str | bytes] = field(default_factory=dict)


@dataclass
class Findings:
    """What went wrong, per request: all of it is reported at once."""

    backend: str
    server_errors: list[str] = field(default_factory=list)
    bad_shapes: list[str] = field(default_factory=list)

    def record(self, label: str, status: int, content_type: str, text: str) -> None:
        if status >= 500:
            self.server_errors.append(f"{label} -> {status} {text[:300]}")
        elif status == 429:
            self.bad_shapes.append(f"{label} -> 429: the fuzzed node has no rate limit")
        elif status >= 400:
            problem = error_shape_problem(content_type, text)
            if problem:
                self.bad_shapes.append(f"{label} -> {status}: {problem}: {text[:300]}")

    def check(self) -> None:
        assert not self.server_errors, f"{len(self.server_errors)} server errors:\n" + "\n".join(self.server_errors)
        assert not self.bad_shapes, "\n".join(self.bad_shapes)


def error_shape_problem(content_type: str, text: str) -> str | None:
    """Why a 4xx body is not the documented ``{"error": str, "params"?: object}``, or None."""
    if not content_type.startswith("application/json"):
        return f"content-type {content_type!r}"
    try:
        body = json.loads(text)
    except ValueError:
        return "not JSON"
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        return "no error message"
    if set(body) - {"error", "params"} or ("params" in body and not isinstance(body["params"], dict)):
        return "keys other than error and params"
    return None


# --- the node ------------------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    backend: str
    node: NodeProcess
    job_id: str  # a job of this node's database, for the path parameters


@pytest.fixture(scope="module", params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    """A ``jobnode serve`` process on a fresh database, with an echo container (a host
    process) so stream, resources and job runs reach a real service."""
    directory = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        url, drop = f"sqlite+aiosqlite:///{directory / 'fuzz.db'}", None
    else:
        request.getfixturevalue("postgresql_url")  # PostgreSQL reachable, or skip/fail as every test
        url = drop = asyncio.run(create_pg_database(prefix="jobnode_fuzz"))
    echo = HostService("echo")
    echo.wait_ready()
    node = NodeProcess(
        directory,
        {
            "database": {"url": url},
            "manage_containers": False,
            "server": {"host": "127.0.0.1", "operator_token": TOKEN, "rate_limit": None},
            "scheduler": {"poll_interval": 0.2},
            "containers": [
                {"id": "echo", "url": echo.url},
                {"id": "inner", "url": echo.url, "external": False},
                {"id": "prover", "url": echo.url, "generates_proofs": True},
            ],
        },
    )
    try:
        node.start()
        answer = httpx.post(f"{node.url}/api/jobs", json={"containers": ["echo"], "data": {"x": 1}}, timeout=10)
        assert answer.status_code == 200, answer.text
        yield FuzzTarget(request.param, node, answer.json()["id"])
    finally:
        node.kill()
        echo.stop()
        if drop is not None:
            asyncio.run(drop_pg_database(drop))


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    query: list[str]  # documented query parameter names
    has_body: bool
    secured: bool  # an operator endpoint


def operations(document: dict[str, Any]) -> list[Operation]:
    """Every operation in the document."""
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
                found.append(
                    Operation(method.upper(), path, names, "requestBody" in operation, bool(operation.get("security")))
                )
    return found


def test_the_document_covers_the_fuzzed_surface(target: FuzzTarget) -> None:
    """Not an empty run: the fuzz below covers every operation the node serves."""
    document = httpx.get(f"{target.node.url}/docs/openapi.json", timeout=10).json()
    served = {(o.method, o.path) for o in operations(document)}
    assert {
        ("GET", "/api/jobs"),
        ("POST", "/api/jobs"),
        ("POST", "/api/jobs/batch"),
        ("POST", "/api/jobs/stream"),
        ("GET", "/api/jobs/{job_id}"),
        ("DELETE", "/api/jobs/{job_id}"),
        ("POST", "/api/jobs/{job_id}/cancel"),
        ("POST", "/api/jobs/{job_id}/retry"),
        ("GET", "/api/containers"),
        ("GET", "/metrics"),
        ("GET", "/dashboard"),
        ("GET", "/dashboard/data"),
        ("GET", "/resources"),
        ("GET", "/health"),
        ("GET", "/info"),
    } <= served


# --- schemathesis --------------------------------------------------------------------------------

#: Job requests naming containers of the node, mixed into generated bodies: a random
#: container name is only ever "Container not supported", which stores nothing.
_REAL_CONTAINERS = st.sampled_from([None, ["echo"], ["echo", "inner"], ["prover"]])


def _use_real_containers(case: schemathesis.Case, containers: list[str] | None) -> None:
    bodies = case.body if isinstance(case.body, list) else [case.body]
    for body in bodies:
        if containers is not None and isinstance(body, dict) and "containers" in body:
            body["containers"] = list(containers)


@pytest.mark.parametrize("with_token", [True, False], ids=["operator", "anonymous"])
def test_generated_cases_get_no_server_error(target: FuzzTarget, with_token: bool) -> None:
    """Without the token, only the operator endpoints: the others do not look at it."""
    document = httpx.get(f"{target.node.url}/docs/openapi.json", timeout=10).json()
    secured = {(o.method, o.path) for o in operations(document) if o.secured}
    schema = schemathesis.openapi.from_dict(document)
    headers = AUTH if with_token else {}
    findings = Findings(target.backend)
    nonconforming: list[str] = []
    operations_run = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not with_token and (operation.method.upper(), operation.path) not in secured:
            continue
        operations_run += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.tuples(operation.as_strategy(generation_mode=mode), _REAL_CONTAINERS)

            @settings(
                max_examples=MAX_EXAMPLES if with_token else MAX_EXAMPLES_ANONYMOUS,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(strategy)
            def run(drawn: tuple[schemathesis.Case, list[str] | None]) -> None:
                # Called at once, within this iteration: the loop's ``mode`` is the one drawn for
                # (hypothesis refuses a ``mode=mode`` default on a @given function).
                case, containers = drawn
                _use_real_containers(case, containers)
                response = case.call(base_url=target.node.url, headers=headers, timeout=60)
                label = f"{case.method} {case.formatted_path} {mode.value}: {case.as_curl_command(headers)}"  # noqa: B023
                content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lists
                findings.record(label, response.status_code, content_type, response.text)
                if not with_token:
                    assert response.status_code == 401, label
                checks = [not_a_server_error, response_schema_conformance]
                try:
                    case.validate_response(response, checks=checks, headers=headers)
                except FailureGroup as failure:
                    nonconforming.append(f"{label}\n{str(failure)[:600]}")

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid: an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert operations_run >= (15 if with_token else len(secured)) and len(secured) >= 8
    findings.check()
    assert not nonconforming, "\n\n".join(nonconforming[:20])


# --- the hand list -------------------------------------------------------------------------------

_DEEP = {n: ("[" * n + "]" * n, '{"a":' * n + "1" + "}" * n) for n in (100, 1_000, 10_000)}
_STRINGS = {
    "nul": "a\u0000b",
    "rtl": "\u202eevil\u202c\u200f",
    "zero-width": "\u200b\u200c\u200d\ufeff",
    "emoji": "\U0001f4a5\U0001f469\u200d\U0001f52c",
    "combining": "e\u0301" * 50,
    "huge": "x" * 600_000,
}


def _json_values() -> dict[str, str]:
    """Raw JSON texts (not all of them valid JSON) to put where a value goes."""
    values = {f"string-{name}": json.dumps(text) for name, text in _STRINGS.items()}
    values.update(
        {
            "lone-surrogate": '"\\ud800"',
            "lone-low-surrogate": '"x\\udfff"',
            "float-1e400": "1e400",
            "float--1e400": "-1e400",
            "int-400-digits": "1" + "0" * 400,
            "int-5000-digits": "9" * 5000,
            "nan": "NaN",
            "infinity": "Infinity",
            "null": "null",
            "true": "true",
            "empty-object": "{}",
            "nul-key": '{"a\\u0000b": 1}',
            "nul-value": '{"a": "x\\u0000y"}',
            "nul-nested": '{"a": [{"\\u0000": ["\\u0000"]}]}',
        }
    )
    for depth, (array, obj) in _DEEP.items():
        values[f"array-deep-{depth}"] = array
        values[f"object-deep-{depth}"] = obj
    return values


def _bodies() -> dict[str, bytes]:
    """Whole request bodies: each value alone, and as a job request's ``data`` or
    container list, and as a batch item."""
    bodies: dict[str, bytes] = {
        "empty": b"",
        "not-json": b"{not json",
        "truncated": b'{"containers": ["echo"], "data": {',
        "invalid-utf8": b'{"containers": ["echo"], "data": {"a": "\xff\xfe"}}',
        "raw-surrogate-utf8": b'{"containers": ["echo"], "data": {"a": "\xed\xa0\x80"}}',
        "raw-nul-byte": b'{"containers": ["echo"], "data": {"a": "\x00"}}',
        "bom": b'\xef\xbb\xbf{"containers": ["echo"], "data": {}}',
        "over-limit": b'{"containers": ["echo"], "data": {"a": "' + b"x" * 1_100_000 + b'"}}',
        "containers-nul": b'{"containers": ["ec\\u0000ho"], "data": {}}',
        "containers-wrong-type": b'{"containers": "echo", "data": {}}',
        "data-wrong-type": b'{"containers": ["echo"], "data": [1]}',
        "requires-proof-wrong-type": b'{"containers": ["prover"], "data": {}, "requires_proof": "yes"}',
        "duplicate-keys": b'{"containers": ["echo"], "containers": ["nope"], "data": {}}',
    }
    for name, value in _json_values().items():
        bodies[f"raw:{name}"] = value.encode()
        data = value if value.startswith("{") else '{"v": ' + value + "}"
        bodies[f"job-data:{name}"] = ('{"containers": ["echo"], "data": ' + data + "}").encode()
        bodies[f"job-containers:{name}"] = ('{"containers": [' + value + '], "data": {}}').encode()
        bodies[f"batch-item:{name}"] = ('[{"containers": ["echo"], "data": ' + data + "}, " + value + "]").encode()
    return bodies


_QUERY_VALUES = {
    "nul": "\u0000",
    "superscript-two": "\u00b2",
    "arabic-digits": "\u0661\u0662",
    "fullwidth-digits": "\uff11\uff12",
    "int-400-digits": "1" + "0" * 400,
    "int-5000-digits": "9" * 5000,
    "float-1e400": "1e400",
    "nan": "nan",
    "negative": "-1",
    "rtl": "\u202e1",
    "emoji": "\U0001f4a5",
    "huge": "x" * 6_000,
    "empty": "",
    "not-a-uuid": "00000000-0000-0000-0000-00000000000g",
}
_QUERY_NAMES = ["id", "intermediate", "wait", "pending", "limit", "after", "token", "model_id", "\u0000"]
_CONTENT_TYPES: list[str | bytes] = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    b"application/\xe9",
]
_PATH_IDS = {
    "nul": "%00",
    "dot-dot": "..%2F..%2Fhealth",
    "superscript": "%C2%B2",
    "huge": "9" * 5000,
    "emoji": "%F0%9F%92%A5",
    "invalid-percent": "%ZZ",
    "lone-surrogate": "%ED%A0%80",
    "uuid-braces": "{" + "0" * 32 + "}",
}


#: What operations without a request body are sent (they must ignore it, or refuse it).
_SOME_BODIES = ["empty", "not-json", "over-limit", "raw:string-nul", "raw:object-deep-10000", "raw:int-5000-digits"]
#: Query parameters no operation documents, sent to all of them.
_UNDOCUMENTED_QUERY = ["\u0000", "id"]


def hand_cases(document: dict[str, Any], job_id: str, operator_only: bool = False) -> Iterator[Sent]:
    """The hand list, for every operation of ``document`` (operator endpoints only: for
    the pass without the token, which they refuse before reading anything else). Every
    body goes to the operations that take one, a few of the worst to the others."""
    bodies = _bodies()
    for op in operations(document):
        if operator_only and not op.secured:
            continue
        method, path = op.method, op.path
        concrete = path.replace("{job_id}", job_id)
        for name in bodies if op.has_body else _SOME_BODIES:
            yield Sent(
                f"{method} {path} body {name}",
                method,
                path,
                concrete,
                body=bodies[name],
                headers={"content-type": "application/json"},
            )
        for content_type in _CONTENT_TYPES if op.has_body else _CONTENT_TYPES[:1]:
            yield Sent(
                f"{method} {path} content-type {content_type!r}",
                method,
                path,
                concrete,
                body=b'{"containers": ["echo"], "data": {}}',
                headers={"content-type": content_type},
            )
        for name in dict.fromkeys(op.query + _UNDOCUMENTED_QUERY):
            for value_name, value in _QUERY_VALUES.items():
                yield Sent(f"{method} {path} ?{name!r}={value_name}", method, path, concrete, params=[(name, value)])
        yield Sent(
            f"{method} {path} ?id repeated 1001 times",
            method,
            path,
            concrete,
            params=[("id", str(uuid.UUID(int=k))) for k in range(1001)],
        )
        # Past it, httpx sends nothing; tests/test_server_errors.py sends one with a raw socket.
        yield Sent(
            f"{method} {path} a request target just under 64 KiB",
            method,
            path,
            concrete,
            params=[("x", "y" * (URL_LIMIT - len(concrete) - 100))],
        )
        if "{job_id}" in path:
            for name, raw in _PATH_IDS.items():
                yield Sent(f"{method} {path} job_id={name}", method, path, path.replace("{job_id}", raw))


def send(http: httpx.Client, sent: Sent, headers: dict[str, str]) -> httpx.Response:
    # A path given as already percent-encoded text: httpx leaves its escapes alone.
    return http.request(
        sent.method, sent.path, params=sent.params, content=sent.body, headers={**headers, **sent.headers}
    )


@pytest.mark.parametrize("with_token", [True, False], ids=["operator", "anonymous"])
def test_nasty_requests_get_no_server_error(target: FuzzTarget, with_token: bool) -> None:
    document = httpx.get(f"{target.node.url}/docs/openapi.json", timeout=10).json()
    findings = Findings(target.backend)
    count = 0
    with httpx.Client(base_url=target.node.url, timeout=60) as http:
        for sent in hand_cases(document, target.job_id, operator_only=not with_token):
            response = send(http, sent, AUTH if with_token else {})
            findings.record(sent.label, response.status_code, response.headers.get("content-type", ""), response.text)
            if not with_token:  # 404: a job_id that leaves the route (../)
                assert response.status_code in (401, 404), (sent.label, response.status_code, response.text)
            count += 1
        assert http.get("/health").status_code == 200  # still up
    assert count > (200 if not with_token else 800), count
    findings.check()
