"""Durable step retries (a container's ``retry``, SPEC §8), on both databases, against real
test services: what is retried and what is not, the backoff between calls, ``Retry-After``,
the wait kept in the database (the job ``pending``, shown ``running``), every attempt in
``GET /api/jobs/{id}``, the metric, the lease budget, cancel, and a node killed while a
retry waits."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.helpers import job, submit
from tests.operator_support import metric, parse_metrics, wait_for
from tests.support import HostService, free_port, wait_finished

GAP_SLACK = 0.5


def _config(cid: str, url: str, retry: dict[str, Any], **scheduler: Any) -> dict[str, Any]:
    return {
        # The poll (1 s) is longer than the backoffs: a retry must start at its due time,
        # not at the next poll.
        "scheduler": {"poll_interval": 1.0, **scheduler},
        "containers": [{"id": cid, "url": url, "retry": retry}],
        "server": {"rate_limit": None},
    }


def _times(service: HostService, key: str) -> list[float]:
    return httpx.get(f"{service.url}/call-times", timeout=5).json().get(key, [])


async def _detail(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def _retries_total(http: httpx.AsyncClient, container: str, reason: str) -> float:
    r = await http.get("/metrics")
    assert r.status_code == 200
    return metric(parse_metrics(r.text), "jobnode_step_retries_total", container=container, reason=reason)


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_a_step_failing_twice_then_succeeding(make_node, host_service, client_address):
    flaky = host_service("flaky", FAILS=2, STATUS=503)
    cid = f"flaky-{client_address}"
    retry = {"attempts": 3, "backoff": 0.2, "max_backoff": 5}
    async with make_node(_config(cid, flaky.url, retry)) as node, node.client(client_address) as http:
        job_id = await submit(http, job(cid, data={"job": job_id_key(client_address)}))
        done = await wait_finished(http, [job_id], timeout=20)
        assert done[job_id]["status"] == "success", done
        assert done[job_id]["result"]["output"] == {"job": job_id_key(client_address)}
        times = _times(flaky, job_id_key(client_address))
        assert len(times) == 3, times  # two failures, one success: no more calls
        for n, gap in enumerate(_gaps(times)):
            delay = 0.2 * 2**n
            assert 0.75 * delay - 0.02 <= gap < 1.25 * delay + GAP_SLACK, (n, gap)

        detail = await _detail(http, job_id)
        assert detail["status"] == "success" and detail["retries"] == 2 and detail["waiting"] is None
        assert detail["attempts"] == 1  # the waits were not lease attempts
        (step,) = detail["steps"]
        attempts = step["attempts"]
        assert [a["attempt"] for a in attempts] == [1, 2, 3]
        assert [a["reason"] for a in attempts] == ["5xx", "5xx", None]
        assert attempts[0]["error"].startswith("HTTP 503") and attempts[2]["error"] is None
        assert all(a["retry_at"] for a in attempts[:2]) and attempts[2]["retry_at"] is None
        assert all(a["node"] == node.node.settings.node_id for a in attempts)
        # The next attempt started at (or just after) the due time the failed one was given.
        for failed, following in itertools.pairwise(attempts):
            late = (_at(following["started_at"]) - _at(failed["retry_at"])).total_seconds()
            assert -0.01 <= late < GAP_SLACK, late
        assert await _retries_total(http, cid, "5xx") == 2


def job_id_key(client_address: str) -> str:
    """The key the test service counts a job's calls by (its ``data["job"]``)."""
    return f"key-{client_address}"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("mode", "env", "error"),
    [
        ("flaky", {"FAILS": 5, "STATUS": 400}, "HTTP 400"),
        ("flaky", {"FAILS": 5, "STATUS": 404}, "HTTP 404"),
        ("badjson", {}, "not valid JSON"),
    ],
)
async def test_4xx_and_invalid_json_are_not_retried(make_node, host_service, client_address, mode, env, error):
    service = host_service(mode, **env)
    cid = f"no-retry-{client_address}"
    async with make_node(_config(cid, service.url, {"attempts": 3, "backoff": 0.05})) as node:
        async with node.client(client_address) as http:
            job_id = await submit(http, job(cid, data={"job": job_id_key(client_address)}))
            done = await wait_finished(http, [job_id], timeout=10)
            assert done[job_id]["status"] == "failed"
            assert done[job_id]["result"]["error"].startswith(error), done
            await asyncio.sleep(0.3)  # three backoffs' time: nothing more comes
            assert service.calls() == {job_id_key(client_address): 1}
            detail = await _detail(http, job_id)
            assert detail["retries"] == 0 and len(detail["steps"][0]["attempts"]) == 1


async def test_attempts_exhausted_end_the_job_failed_with_every_attempt(make_node, host_service, client_address):
    flaky = host_service("flaky", FAILS=100, STATUS=502)
    cid = f"down-{client_address}"
    async with make_node(_config(cid, flaky.url, {"attempts": 2, "backoff": 0.05})) as node:
        async with node.client(client_address) as http:
            job_id = await submit(http, job(cid, data={"job": job_id_key(client_address)}))
            done = await wait_finished(http, [job_id], timeout=10)
            assert done[job_id]["status"] == "failed"
            assert done[job_id]["result"]["error"].startswith("HTTP 502")
            await asyncio.sleep(0.3)
            assert flaky.calls() == {job_id_key(client_address): 3}
            detail = await _detail(http, job_id)
            attempts = detail["steps"][0]["attempts"]
            assert [a["attempt"] for a in attempts] == [1, 2, 3]
            assert [a["reason"] for a in attempts] == ["5xx", "5xx", None]
            assert all(a["error"].startswith("HTTP 502") for a in attempts)
            assert detail["steps"][0]["error"].startswith("HTTP 502") and detail["retries"] == 2


async def test_retry_after_is_honoured(make_node, host_service, client_address):
    flaky = host_service("flaky", FAILS=1, STATUS=429, RETRY_AFTER=1)
    cid = f"busy-{client_address}"
    async with make_node(_config(cid, flaky.url, {"attempts": 1, "backoff": 0.05, "max_backoff": 5})) as node:
        async with node.client(client_address) as http:
            job_id = await submit(http, job(cid, data={"job": job_id_key(client_address)}))
            done = await wait_finished(http, [job_id], timeout=10)
            assert done[job_id]["status"] == "success"
            (gap,) = _gaps(_times(flaky, job_id_key(client_address)))
            assert 0.98 <= gap < 1.0 + GAP_SLACK, gap
            attempts = (await _detail(http, job_id))["steps"][0]["attempts"]
            assert attempts[0]["reason"] == "429"
            assert await _retries_total(http, cid, "429") == 1


async def test_a_timeout_is_retried(make_node, host_service, client_address):
    slow = host_service("slow", DELAY=1)
    cid = f"slow-{client_address}"
    config = _config(cid, slow.url, {"attempts": 1, "backoff": 0.05})
    config["containers"][0]["timeout"] = 0.2
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job(cid, data={"job": job_id_key(client_address)}))
        done = await wait_finished(http, [job_id], timeout=10)
        assert done[job_id]["status"] == "failed"
        assert done[job_id]["result"]["error"] == "timed out after 0.2 s"
        assert slow.calls() == {job_id_key(client_address): 2}
        attempts = (await _detail(http, job_id))["steps"][0]["attempts"]
        assert [a["reason"] for a in attempts] == ["timeout", None]
        assert await _retries_total(http, cid, "timeout") == 1


async def test_a_refused_connection_is_retried_until_the_container_is_up(make_node, client_address):
    port = free_port()
    cid = f"late-{client_address}"
    config = _config(cid, f"http://127.0.0.1:{port}", {"attempts": 10, "backoff": 0.2, "max_backoff": 0.4})
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job(cid, data={"job": job_id_key(client_address)}))

        async def retried() -> dict[str, Any] | None:
            detail = await _detail(http, job_id)
            return detail if detail["retries"] >= 1 else None

        waiting = await wait_for(retried)
        assert waiting["waiting"]["attempts"][0]["reason"] == "connection"
        assert waiting["waiting"]["attempts"][0]["error"] == "connection refused"
        service = HostService("echo", PORT=port)  # on the port the node calls
        service.port, service.url = port, f"http://127.0.0.1:{port}"
        try:
            service.wait_ready()
            done = await wait_finished(http, [job_id], timeout=10)
        finally:
            service.stop()
        assert done[job_id]["status"] == "success"
        assert await _retries_total(http, cid, "connection") >= 1


async def test_a_waiting_job_reads_running_and_can_be_cancelled(make_node, host_service, client_address):
    flaky = host_service("flaky", FAILS=1)
    cid = f"wait-{client_address}"
    async with make_node(_config(cid, flaky.url, {"attempts": 1, "backoff": 1.5, "max_backoff": 1.5})) as node:
        async with node.client(client_address) as http:
            key = job_id_key(client_address)
            job_id = await submit(http, job(cid, data={"job": key}))
            await wait_for(lambda: _true(flaky.calls().get(key) == 1))

            async def waiting() -> dict[str, Any] | None:
                detail = await _detail(http, job_id)
                return detail if detail["waiting"] else None

            detail = await wait_for(waiting)
            assert detail["status"] == "pending" and detail["api_status"] == "running"
            assert detail["waiting"]["position"] == 0 and detail["waiting"]["container"] == cid
            assert detail["waiting"]["next_attempt_at"] == detail["run_after"]
            assert [a["attempt"] for a in detail["waiting"]["attempts"]] == [1]
            (answer,) = (await http.get("/api/jobs", params={"id": job_id})).json()
            assert answer["status"] == "running"
            # A read waiting for it is not told that it ended.
            started = time.monotonic()
            r = await http.get("/api/jobs", params={"id": job_id, "wait": "0.5"})
            assert r.json()[0]["status"] == "running" and time.monotonic() - started >= 0.45

            r = await http.delete(f"/api/jobs/{job_id}")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "cancelled"
            await asyncio.sleep(1.8)  # past its due time: never called again
            assert flaky.calls() == {key: 1}
            (answer,) = (await http.get("/api/jobs", params={"id": job_id})).json()
            assert answer["status"] == "failed"


async def _true(value: bool) -> bool:
    return value


async def test_retries_are_not_lease_attempts(make_node, host_service, client_address):
    flaky = host_service("flaky", FAILS=3)
    cid = f"budget-{client_address}"
    config = _config(cid, flaky.url, {"attempts": 3, "backoff": 0.05, "max_backoff": 0.1}, max_attempts=1)
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job(cid, data={"job": job_id_key(client_address)}))
        done = await wait_finished(http, [job_id], timeout=10)
        assert done[job_id]["status"] == "success"
        assert flaky.calls() == {job_id_key(client_address): 4}
        detail = await _detail(http, job_id)
        assert detail["attempts"] == 1 and detail["retries"] == 3


async def test_a_later_step_retried_resumes_after_the_steps_done(make_node, host_service, client_address):
    """The second step of a chain waits for its retry; the first is not run again."""
    echo, flaky = host_service("count"), host_service("flaky", FAILS=1)
    first, second = f"first-{client_address}", f"second-{client_address}"
    config = _config(second, flaky.url, {"attempts": 2, "backoff": 0.1})
    config["containers"].insert(0, {"id": first, "url": echo.url})
    async with make_node(config) as node, node.client(client_address) as http:
        key = job_id_key(client_address)
        job_id = await submit(http, job(first, second, data={"job": key}))
        done = await wait_finished(http, [job_id], timeout=10)
        assert done[job_id]["status"] == "success"
        assert (echo.calls(), flaky.calls()) == ({key: 1}, {key: 2})
        detail = await _detail(http, job_id)
        assert [len(step["attempts"]) for step in detail["steps"]] == [1, 2]
        assert detail["steps"][1]["attempts"][0]["reason"] == "5xx"


async def test_a_requeued_job_gets_its_retries_anew(make_node, host_service, client_address):
    flaky = host_service("flaky", FAILS=100)
    cid = f"again-{client_address}"
    async with make_node(_config(cid, flaky.url, {"attempts": 1, "backoff": 0.05})) as node:
        async with node.client(client_address) as http:
            key = job_id_key(client_address)
            job_id = await submit(http, job(cid, data={"job": key}))
            assert (await wait_finished(http, [job_id], timeout=10))[job_id]["status"] == "failed"
            assert (await http.post(f"/api/jobs/{job_id}/retry")).status_code == 200
            await wait_for(lambda: _true(flaky.calls().get(key) == 4))
            assert (await wait_finished(http, [job_id], timeout=10))[job_id]["status"] == "failed"
            detail = await _detail(http, job_id)
            assert detail["retries"] == 1
            assert [a["attempt"] for a in detail["steps"][0]["attempts"]] == [1, 2]
