"""``GET /api/jobs/events`` (SPEC §9): steps and ends of a client's jobs as Server-Sent
Events, replayed from the database after ``Last-Event-ID``; on SQLite and PostgreSQL, with
real nodes, real test services, and (PostgreSQL) a job run by another node."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from tests.helpers import assert_error, job, other_address, submit
from tests.operator_support import container, metric, parse_metrics, scheduled, wait_for
from tests.support import NodeProcess, RunningNode, node_settings, serve_node, wait_finished


@dataclass
class Sse:
    """What a client read from one stream."""

    status: int
    content_type: str
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: int = 0
    ended: bool = False


async def stream(
    http: httpx.AsyncClient,
    ids: list[str],
    last: str | None = None,
    stop_after: int | None = None,
    stop_at_comment: bool = False,
    timeout: float = 30,
) -> Sse:
    """Read ``/api/jobs/events`` until it ends (or ``stop_after`` events, then hang up)."""
    headers = {} if last is None else {"Last-Event-ID": last}
    async with (
        asyncio.timeout(timeout),
        http.stream("GET", "/api/jobs/events", params=[("id", i) for i in ids], headers=headers) as r,
    ):
        sse = Sse(r.status_code, r.headers.get("content-type", ""))
        if r.status_code != 200:
            await r.aread()
            return sse
        current: dict[str, Any] = {}
        async for line in r.aiter_lines():
            if line.startswith(":"):
                sse.comments += 1
                if stop_at_comment:
                    return sse
            elif line == "":
                if current:
                    sse.events.append(current)
                    current = {}
                    if stop_after is not None and len(sse.events) >= stop_after:
                        return sse
            else:
                key, _, value = line.partition(": ")
                current[key] = msgspec.json.decode(value) if key == "data" else value
        sse.ended = True
        return sse


def kinds(sse: Sse) -> list[tuple[str, str]]:
    return [(e["event"], e["id"]) for e in sse.events]


def chain_config(host_service: Any, delay: float = 0.0, **server: Any) -> dict[str, Any]:
    a = host_service("transform", NAME="a")
    b = host_service("transform", NAME="b", DELAY=delay)
    c = host_service("transform", NAME="c")
    return scheduled(
        container("a", a.url), container("b", b.url), container("c", c.url), lease_seconds=30, server=server or None
    )


STEP_A = {"container": "a", "output": {"value": 2, "seen": ["a"]}}
STEP_B = {"container": "b", "output": {"value": 4, "seen": ["a", "b"]}}
STEP_C = {"container": "c", "output": {"value": 8, "seen": ["a", "b", "c"]}}


def chain_events(job_id: str) -> list[dict[str, Any]]:
    return [
        {"id": "1", "event": "step", "data": {"id": job_id, "index": 0, **STEP_A}},
        {"id": "2", "event": "step", "data": {"id": job_id, "index": 1, **STEP_B}},
        {"id": "3", "event": "step", "data": {"id": job_id, "index": 2, **STEP_C}},
        {
            "id": "4",
            "event": "job",
            "data": {"id": job_id, "status": "success", "result": STEP_C, "intermediate_results": [STEP_A, STEP_B]},
        },
    ]


async def test_a_chain_streams_its_steps_then_its_end(make_node, host_service, client_address):
    async with make_node(chain_config(host_service, delay=0.3)) as node, node.client(client_address) as http:
        job_id = await submit(http, job("a", "b", "c", data={"value": 1}))
        sse = await stream(http, [job_id])
        assert sse.status == 200 and sse.content_type.startswith("text/event-stream")
        assert sse.ended and sse.events == chain_events(job_id)


async def test_an_ended_job_is_replayed_from_the_database_and_the_stream_ends(make_node, host_service, client_address):
    async with make_node(chain_config(host_service)) as node, node.client(client_address) as http:
        job_id = await submit(http, job("a", "b", "c", data={"value": 1}))
        await wait_finished(http, [job_id])
        sse = await stream(http, [job_id])
        assert sse.ended and sse.events == chain_events(job_id)
        # After the last event: nothing more to send, the stream ends at once.
        assert (await stream(http, [job_id], last="4")).events == []
        assert (await stream(http, [job_id], last="2")).events == chain_events(job_id)[2:]


async def test_a_reconnect_with_last_event_id_gets_only_the_missed_events(make_node, host_service, client_address):
    async with make_node(chain_config(host_service, delay=1.5)) as node, node.client(client_address) as http:
        job_id = await submit(http, job("a", "b", "c", data={"value": 1}))
        first = await stream(http, [job_id], stop_after=1)  # hangs up while b runs
        assert first.events == chain_events(job_id)[:1] and not first.ended
        again = await stream(http, [job_id], last=first.events[-1]["id"])
        assert again.ended and again.events == chain_events(job_id)[1:]


async def test_several_jobs_in_one_stream(make_node, host_service, client_address):
    async with make_node(chain_config(host_service, delay=0.2)) as node, node.client(client_address) as http:
        one = await submit(http, job("a", data={"value": 1}))
        two = await submit(http, job("a", "b", data={"value": 1}))
        sse = await stream(http, [one, two, one])  # a repeated id counts once
        assert sse.ended
        by_job = {one: [], two: []}
        for event in sse.events:
            by_job[event["data"]["id"]].append(event["event"])
        assert by_job == {one: ["step", "job"], two: ["step", "step", "job"]}
        assert sse.events[-1]["id"] == "2.3"
        ids = [tuple(map(int, e["id"].split("."))) for e in sse.events]
        assert ids == sorted(ids)  # progress only grows
        # A reconnect names where each job was.
        replay = await stream(http, [one, two], last="2.1")
        assert [(e["event"], e["data"]["id"]) for e in replay.events] == [("step", two), ("job", two)]
        assert kinds(replay) == [("step", "2.2"), ("job", "2.3")]


async def test_other_clients_ids_are_left_out(make_node, host_service, client_address):
    async with (
        make_node(chain_config(host_service)) as node,
        node.client(client_address) as http,
        node.client(other_address(client_address)) as other,
    ):
        mine = await submit(http, job("a", data={"value": 1}))
        theirs = await submit(other, job("a", data={"value": 1}))
        unknown = "00000000-0000-4000-8000-000000000000"
        sse = await stream(http, [theirs, mine, unknown])
        assert sse.ended and {e["data"]["id"] for e in sse.events} == {mine}
        assert kinds(sse) == [("step", "0.1.0"), ("job", "0.2.0")]
        # None of them is this client's: the stream ends at once, empty.
        started = time.monotonic()
        nothing = await stream(http, [theirs, unknown])
        assert nothing.status == 200 and nothing.ended and nothing.events == []
        assert time.monotonic() - started < 5


async def test_a_failing_step_is_an_error_event_and_a_failed_job(make_node, host_service, client_address):
    ok, bad = host_service("transform", NAME="a"), host_service("fail")
    config = scheduled(container("a", ok.url), container("bad", bad.url), lease_seconds=30)
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("a", "bad", data={"value": 1}))
        sse = await stream(http, [job_id])
        assert sse.ended and kinds(sse) == [("step", "1"), ("step", "2"), ("job", "3")]
        error = sse.events[1]["data"]
        assert error["id"] == job_id and error["index"] == 1 and error["container"] == "bad"
        assert "500" in error["error"] and "output" not in error
        end = sse.events[2]["data"]
        assert end["status"] == "failed" and end["result"] == {"container": "bad", "error": error["error"]}
        assert end["intermediate_results"] == [STEP_A]


async def test_silence_is_broken_by_keep_alive_comments(make_node, host_service, client_address):
    config = chain_config(host_service, delay=1.0, sse_keepalive=0.1)
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("a", "b", data={"value": 1}))
        sse = await stream(http, [job_id])
        assert sse.ended and sse.comments >= 3
        assert [e["event"] for e in sse.events] == ["step", "step", "job"]


def _feed_is_idle(node: RunningNode) -> Any:
    async def check() -> bool:
        feed = node.node.events
        return feed.streams == 0 and feed.watched_jobs() == 0 and not node.node.jobs.live._listeners

    return check


async def test_a_client_that_goes_away_releases_its_listeners(make_node, host_service, client_address):
    config = chain_config(host_service, delay=30)
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("a", "b", data={"value": 1}))
        sse = await stream(http, [job_id], stop_after=1)  # the step of a; b runs for 30 s
        assert kinds(sse) == [("step", "1")]
        await wait_for(_feed_is_idle(node))
        # Many streams open and dropped: nothing stays behind.
        opened = [asyncio.create_task(stream(http, [job_id], stop_after=1)) for _ in range(20)]
        assert all(len(s.events) == 1 for s in await asyncio.gather(*opened))
        await wait_for(_feed_is_idle(node))


async def _open_streams(http: httpx.AsyncClient) -> float:
    r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    return metric(parse_metrics(r.text), "jobnode_event_streams_open")


async def test_streams_beyond_the_limit_are_refused(make_node, host_service, client_address):
    config = chain_config(host_service, delay=30, max_event_streams=1)
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("a", "b", data={"value": 1}))
        async with http.stream("GET", "/api/jobs/events", params={"id": job_id}) as held:
            assert held.status_code == 200
            r = await http.get("/api/jobs/events", params={"id": job_id})
            assert_error(r, 503, "Too many event streams", {"limit": 1})
            assert r.headers["retry-after"] == "1"
            assert await _open_streams(http) == 1  # the refused one is not counted
        await wait_for(_feed_is_idle(node))
        assert await _open_streams(http) == 0
        assert (await stream(http, [job_id], stop_after=1)).status == 200


async def test_malformed_queries_are_400s(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http, job("echo"))
        r = await http.get("/api/jobs/events", params={"id": "nope"})
        assert_error(r, 400, "Invalid job id", {"id": "nope"})
        r = await http.get("/api/jobs/events")
        assert_error(r, 400, "Invalid parameter", {"name": "id", "value": ""})
        r = await http.get("/api/jobs/events", params=[("id", job_id)] * 1001)
        assert_error(r, 400, "Too many ids", {"limit": 1000})
        for bad in ("x", "1.2", "-1", "1e3", "1.", "1234567890"):
            r = await http.get("/api/jobs/events", params={"id": job_id}, headers={"Last-Event-ID": bad})
            assert_error(r, 400, "Invalid parameter", {"name": "Last-Event-ID", "value": bad})
        r = await http.get("/api/jobs/events", params={"id": job_id, "last_event_id": "a.b"})
        assert_error(r, 400, "Invalid parameter", {"name": "last_event_id", "value": "a.b"})
        # Not the operator's "job not found": the route is this one.
        async with http.stream("GET", "/api/jobs/events", params={"id": job_id}, headers={"Last-Event-ID": "1"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")


async def test_a_job_run_by_another_node_streams_its_steps_and_end(postgresql_url, host_service, client_address):
    """PostgreSQL: the node serving the stream runs nothing; another node runs the job."""
    config = chain_config(host_service, delay=0.5)
    worker = {**config, "scheduler": {**config["scheduler"], "node_id": "worker"}}
    front = {**config, "scheduler": {**config["scheduler"], "enabled": False, "node_id": "front"}}
    async with (
        serve_node(node_settings(postgresql_url, front)) as api,
        api.client(client_address) as http,
    ):
        job_id = await submit(http, job("a", "b", "c", data={"value": 1}))
        reading = asyncio.create_task(stream(http, [job_id]))
        await asyncio.sleep(0.5)  # the job waits, queued, watched from the database
        async with serve_node(node_settings(postgresql_url, worker)):
            sse = await reading
        assert sse.ended and sse.events == chain_events(job_id)


async def test_a_reconnect_to_another_node_replays_from_the_database(postgresql_url, host_service, client_address):
    """Event ids are the database's: any node continues any stream."""
    config = chain_config(host_service, delay=1.0)
    front = {**config, "scheduler": {**config["scheduler"], "enabled": False, "node_id": "front"}}
    worker = {**config, "scheduler": {**config["scheduler"], "node_id": "worker"}}
    async with (
        serve_node(node_settings(postgresql_url, worker)) as running,
        serve_node(node_settings(postgresql_url, front)) as api,
        running.client(client_address) as on_worker,
        api.client(client_address) as on_front,
    ):
        job_id = await submit(on_worker, job("a", "b", "c", data={"value": 1}))
        first = await stream(on_worker, [job_id], stop_after=2)
        rest = await stream(on_front, [job_id], last=first.events[-1]["id"])
        assert first.events + rest.events == chain_events(job_id)


async def test_a_stopping_node_ends_its_streams(tmp_path, host_service):
    """SIGTERM: open streams end at once (their clients reconnect elsewhere with
    ``Last-Event-ID``) instead of holding the shutdown up."""
    slow = host_service("slow", DELAY=60)
    config = scheduled(container("a", slow.url), lease_seconds=30, shutdown_grace=20)
    config["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"}
    node = NodeProcess(tmp_path, config).start()
    try:
        async with node.client() as http:
            job_id = await submit(http, job("a"))
            reading = asyncio.create_task(stream(http, [job_id]))
            await asyncio.sleep(1)
            assert not reading.done()
            started = time.monotonic()
            node.process.terminate()
            sse = await reading
            assert sse.ended and sse.events == [] and time.monotonic() - started < 5
    finally:
        node.kill()
