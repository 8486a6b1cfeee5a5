"""Operator endpoints for one job: ``GET /api/jobs/{id}``, cancel, retry; on SQLite and
PostgreSQL, with real container-protocol services (host processes, by url)."""

from __future__ import annotations

import uuid
from datetime import datetime

from tests.helpers import assert_error, job, submit
from tests.operator_support import container, scheduled, wait_for
from tests.support import HostService, free_port, wait_finished


async def _detail(http, job_id: str) -> dict:
    r = await http.get(f"/api/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_job_in_full(make_node, host_service, client_address):
    first, fail = host_service("transform"), host_service("fail")
    config = scheduled(container("first", first.url), container("fail", fail.url))
    async with make_node(config) as node, node.client(client_address) as http:
        ok = await submit(http, job("first", data={"value": 3}))
        bad = await submit(http, job("first", "fail", data={"value": 1}))
        await wait_finished(http, [ok, bad])

        detail = await _detail(http, ok)
        assert detail["id"] == ok and detail["status"] == "success" and detail["api_status"] == "success"
        assert detail["client"] == client_address and detail["source"] == "offchain"
        assert detail["containers"] == ["first"] and detail["input"] == {"value": 3}
        assert detail["attempts"] == 1 and detail["node"] == node.node.settings.node_id
        assert detail["result"] == {"container": "first", "output": {"value": 6, "seen": ["transform"]}}
        created, started, finished = (
            datetime.fromisoformat(detail[k]) for k in ("created_at", "started_at", "finished_at")
        )
        assert created <= started <= finished and created.utcoffset().total_seconds() == 0
        assert detail["duration_seconds"] >= 0 and detail["queued_seconds"] >= 0
        (step,) = detail["steps"]
        assert step["position"] == 0 and step["container"] == "first" and step["error"] is None
        assert step["output"] == {"value": 6, "seen": ["transform"]}
        assert step["attempt"] == 1 and step["node"] == node.node.settings.node_id
        assert 0 <= step["duration_seconds"] < 5
        assert datetime.fromisoformat(step["started_at"]) <= datetime.fromisoformat(step["finished_at"])

        failed = await _detail(http, bad)
        assert failed["status"] == "failed" and failed["api_status"] == "failed"
        assert [(s["container"], s["error"]) for s in failed["steps"]] == [
            ("first", None),
            ("fail", 'HTTP 500: {"detail": "boom"}'),
        ]
        assert failed["result"] == {"container": "fail", "error": 'HTTP 500: {"detail": "boom"}'}


async def test_unknown_and_invalid_ids(node, client_address):
    async with node.client(client_address) as http:
        missing = str(uuid.uuid4())
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("POST", "/retry")):
            assert_error(await http.request(method, f"/api/jobs/{missing}{path}"), 404, "Job not found")
            assert_error(
                await http.request(method, f"/api/jobs/not-a-uuid{path}"), 400, "Invalid job id", {"id": "not-a-uuid"}
            )
        # Another client's job is visible to the operator (it is not the compatible surface).
        job_id = await submit(http)
        assert (await _detail(http, job_id.upper()))["id"] == job_id
        async with node.client("::1") as other:
            assert (await _detail(other, job_id))["status"] == "pending"
        # The compatible routes around it are unchanged.
        assert_error(await http.patch("/api/jobs/batch"), 405, "Method not allowed")
        assert_error(await http.get(f"/api/jobs/{job_id}/x/y"), 404, "Not found")


async def test_cancel_abandons_the_running_step_and_the_queue(make_node, host_service, client_address):
    slow = host_service("slow", DELAY=5)
    config = scheduled(container("slow", slow.url), max_concurrent_jobs=1)
    # (No other test leaves "slow" jobs pending in the shared database.)
    async with make_node(config) as node, node.client(client_address) as http:
        running = await submit(http, job("slow", data={"job": "running"}))
        await wait_for(lambda: _status_is(http, running, "running"))
        await wait_for(lambda: _calls(slow, "running"))
        queued = await submit(http, job("slow", data={"job": "queued"}))
        assert (await _detail(http, queued))["status"] == "pending"

        r = await http.post(f"/api/jobs/{queued}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled" and r.json()["api_status"] == "failed"
        r = await http.delete(f"/api/jobs/{running}")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert detail["status"] == "cancelled" and detail["finished_at"] is not None
        assert [(s["container"], s["error"]) for s in detail["steps"]] == [("slow", "cancelled")]

        # The compatible surface: failed, a ContainerError "cancelled" for the container reached.
        plain = (await http.get("/api/jobs", params=[("id", running), ("id", queued)])).json()
        assert plain == [
            {"id": running, "status": "failed", "result": {"container": "slow", "error": "cancelled"}},
            {"id": queued, "status": "failed", "result": {"container": "slow", "error": "cancelled"}},
        ]
        # The heartbeat (every lease/3 = 0.2 s) abandons the running call promptly.
        await wait_for(lambda: _no_jobs_running(node), timeout=3)
        state = node.node.containers.get("slow")
        await wait_for(lambda: _is_zero(state), timeout=3)
        # Finished means finished: no second cancel, and the queued job never ran.
        for method, path in (("DELETE", ""), ("POST", "/cancel")):
            assert_error(await http.request(method, f"/api/jobs/{running}{path}"), 409, "Job already finished")
        assert slow.calls() == {"running": 1}
        assert (await _detail(http, running))["status"] == "cancelled"


async def test_retry_resumes_at_the_failed_step(make_node, host_service, client_address):
    first = host_service("transform")
    later_port = free_port()
    config = scheduled(container("first", first.url), container("later", f"http://127.0.0.1:{later_port}"))
    later: HostService | None = None
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("first", "later", data={"value": 1, "job": "r"}))
        result = (await wait_finished(http, [job_id]))[job_id]
        assert result["result"] == {"container": "later", "error": "connection refused"}
        assert_error(await http.post(f"/api/jobs/{job_id}/cancel"), 409, "Job already finished")
        try:
            later = HostService("count", PORT=later_port)
            later.port, later.url = later_port, f"http://127.0.0.1:{later_port}"
            later.wait_ready()
            r = await http.post(f"/api/jobs/{job_id}/retry")
            assert r.status_code == 200, r.text
            assert r.json()["status"] in ("pending", "running", "success")
            assert r.json()["attempts"] in (0, 1)
            assert [s["container"] for s in r.json()["steps"]] in (["first"], ["first", "later"])
            result = (await wait_finished(http, [job_id]))[job_id]
            assert result["status"] == "success"
            assert result["result"] == {"container": "later", "output": {"value": 2, "seen": ["transform"]}}
            assert first.calls() == {"r": 1}, "the step that had succeeded ran again"
            assert later.calls() == {'{"seen":["transform"],"value":2}': 1}
            detail = await _detail(http, job_id)
            assert detail["attempts"] == 1 and [s["error"] for s in detail["steps"]] == [None, None]
            assert_error(await http.post(f"/api/jobs/{job_id}/retry"), 409, "Job is not failed")
        finally:
            if later is not None:
                later.stop()


async def test_only_failed_or_cancelled_jobs_are_retried(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)  # the scheduler is off: it stays pending
        assert_error(await http.post(f"/api/jobs/{job_id}/retry"), 409, "Job is not failed")
        assert (await http.delete(f"/api/jobs/{job_id}")).status_code == 200
        r = await http.post(f"/api/jobs/{job_id}/retry")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert detail["status"] == "pending" and detail["steps"] == [] and detail["finished_at"] is None
        plain = (await http.get("/api/jobs", params={"id": job_id})).json()
        assert plain == [{"id": job_id, "status": "running", "result": None}]


async def _status_is(http, job_id: str, status: str) -> bool:
    return (await _detail(http, job_id))["status"] == status


async def _calls(service: HostService, key: str) -> bool:
    return service.calls().get(key, 0) > 0


async def _no_jobs_running(node) -> bool:
    return not node.node.scheduler.running


async def _is_zero(state) -> bool:
    return state.in_flight == 0
