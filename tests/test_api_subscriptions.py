"""Subscriptions through the API (SPEC §7), on both databases: the request form and each
of its errors, interval jobs run and read back, a delayed job, cancel, client isolation.
Containers are test services run as host processes (no Docker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.helpers import assert_error, assert_invalid_request, job, listed, other_address, submit, submit_batch
from tests.operator_support import wait_for

NOT_FOUND = {"error": "Subscription not found"}


def _config(url: str, **server: Any) -> dict[str, Any]:
    return {
        "scheduler": {"poll_interval": 0.2},
        "containers": [{"id": "echo", "url": url}],
        "server": {"rate_limit": None, **server},
    }


def subscription(period: int, frequency: int, active_at: int | None = None, **extra: Any) -> dict[str, Any]:
    schedule: dict[str, Any] = {"period": period, "frequency": frequency}
    if active_at is not None:
        schedule["active_at"] = active_at
    return job("echo", data={"n": 1}, subscription=schedule, **extra)


async def document(http: httpx.AsyncClient, subscription_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/subscriptions/{subscription_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def until(http: httpx.AsyncClient, subscription_id: str, check: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = await document(http, subscription_id)
        if check(body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def test_each_error_of_the_request_form(make_node, host_service, client_address):
    echo = host_service("echo")
    async with make_node(_config(echo.url, max_subscriptions=2)) as node, node.client(client_address) as http:
        for bad, field in [
            ({"period": "1", "frequency": 1}, "subscription.period"),
            ({"period": 1, "frequency": 1.5}, "subscription.frequency"),
            ({"period": 1, "frequency": 1, "active_at": True}, "subscription.active_at"),
            ({"frequency": 1}, "period"),
            ([1, 2], "subscription"),
        ]:
            r = await http.post("/api/jobs", json=job("echo", subscription=bad))
            assert r.status_code == 400, r.text
            assert_invalid_request(r.json(), field)
        for schedule, field, reason in [
            ((-1, 1, None), "period", "must be between 0 and 31536000"),
            ((31_536_001, 1, None), "period", "must be between 0 and 31536000"),
            ((1, 0, None), "frequency", "must be between 1 and 4294967295"),
            ((1, 4_294_967_296, None), "frequency", "must be between 1 and 4294967295"),
            ((1, 1, -1), "active_at", "must be between 0 and 4294967295"),
            ((1, 1, 4_294_967_296), "active_at", "must be between 0 and 4294967295"),
            ((0, 2, None), "period", "must be at least 1 when frequency is more than 1"),
        ]:
            r = await http.post("/api/jobs", json=subscription(*schedule))
            assert_error(r, 400, "Invalid subscription", {"field": field, "reason": reason})
        # The checks of a job come first.
        r = await http.post("/api/jobs", json={**subscription(-1, 1), "containers": ["nope"]})
        assert_error(r, 400, "Container not supported", {"container": "nope"})
        r = await http.post("/api/jobs/stream", json=subscription(1, 1))
        assert_error(r, 400, "Streaming does not support subscriptions")
        # The quota: two active; a batch answers the third in its place, the job beside it stored.
        future = int(time.time()) + 3600
        await submit(http, subscription(0, 1, future))
        answers = await submit_batch(http, [subscription(0, 1, future), subscription(0, 1, future), job("echo")])
        assert "id" in answers[0] and "id" in answers[2]
        assert answers[1] == {"error": "Too many subscriptions", "params": {"limit": 2}}
        r = await http.post("/api/jobs", json=subscription(0, 1, future))
        assert_error(r, 400, "Too many subscriptions", {"limit": 2})
        # Another client has a quota of its own.
        async with node.client(other_address(client_address)) as other:
            await submit(other, subscription(0, 1, future))


async def test_recurring_subscription_runs_each_interval(make_node, host_service, client_address):
    echo = host_service("echo")
    async with make_node(_config(echo.url)) as node, node.client(client_address) as http:
        start = int(time.time()) + 1
        sub = await submit(http, subscription(1, 3, start))
        first = await document(http, sub)
        assert {k: first[k] for k in ("id", "containers", "period", "frequency", "active_at", "status")} == {
            "id": sub,
            "containers": ["echo"],
            "period": 1,
            "frequency": 3,
            "active_at": start,
            "status": "active",
        }
        assert (first["next_interval"], first["next_at"]) == (1, start)
        assert (await http.get("/api/jobs", params={"id": sub})).json() == [
            {"id": sub, "status": "running", "result": None}
        ]
        done = await until(http, sub, lambda d: d["status"] == "completed" and d["counts"]["success"] == 3)
        assert done["counts"] == {"started": 3, "success": 3, "failed": 0, "missed": 0}
        assert [j["interval"] for j in done["jobs"]] == [1, 2, 3]
        assert (done["next_interval"], done["next_at"]) == (None, None)
        page = (await http.get(f"/api/subscriptions/{sub}/jobs", params={"limit": 2})).json()
        assert page == done["jobs"][:2]
        rest = (await http.get(f"/api/subscriptions/{sub}/jobs", params={"after": page[-1]["id"]})).json()
        assert rest == done["jobs"][2:]
        # Its jobs are this client's jobs; the subscription's id is not among them.
        ids = await listed(http)
        assert [j["id"] for j in done["jobs"]] == [i for i in ids if i != sub][-3:] and sub not in ids
        result = (await http.get("/api/jobs", params={"id": sub})).json()
        assert result == [{"id": sub, "status": "success", "result": {"container": "echo", "output": {"n": 1}}}]
        assert (await http.get("/api/subscriptions")).json() == [sub]
        metrics = (await http.get("/metrics")).text
        assert 'jobnode_subscriptions{state="active"}' in metrics
        started = [
            line for line in metrics.splitlines() if line.startswith("jobnode_subscription_intervals_started_total")
        ]
        assert started and float(started[0].split()[-1]) >= 3, started
        assert "jobnode_subscription_start_lag_seconds_bucket" in metrics
        # The operator's view of an interval's job names its subscription.
        detail = (await http.get(f"/api/jobs/{done['jobs'][1]['id']}")).json()
        assert detail["subscription"] == {"id": sub, "interval": 2}
        assert (await http.get("/api/subscriptions", params={"active": "true"})).json() == []
        assert (await http.get("/api/subscriptions", params={"active": "false"})).json() == [sub]


async def test_delayed_job(make_node, host_service, client_address):
    echo = host_service("echo")
    async with make_node(_config(echo.url)) as node, node.client(client_address) as http:
        due = int(time.time()) + 2
        sub = await submit(http, subscription(0, 1, due))
        await asyncio.sleep(0.5)
        assert (await document(http, sub))["jobs"] == []
        done = await until(http, sub, lambda d: d["counts"]["success"] == 1)
        assert time.time() >= due
        assert done["status"] == "completed" and done["counts"]["missed"] == 0


async def test_cancel(make_node, host_service, client_address):
    slow = host_service("slow", DELAY=2)
    async with make_node(_config(slow.url)) as node, node.client(client_address) as http:
        # Before any interval ran: failed, "cancelled".
        never = await submit(http, subscription(0, 1, int(time.time()) + 3600))
        r = await http.delete(f"/api/subscriptions/{never}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert (await http.get("/api/jobs", params={"id": never})).json() == [
            {"id": never, "status": "failed", "result": {"container": "echo", "error": "cancelled"}}
        ]
        # While an interval runs: it ends as it would, no interval starts after.
        sub = await submit(http, subscription(1, 100))
        await until(http, sub, lambda d: d["jobs"] != [])

        async def reached_the_service() -> bool:  # claimed and running, not only stored
            return bool(await asyncio.to_thread(slow.calls))

        await wait_for(reached_the_service)
        cancelled = (await http.delete(f"/api/subscriptions/{sub}")).json()
        assert cancelled["status"] == "cancelled"
        started = cancelled["counts"]["started"]
        done = await until(http, sub, lambda d: all(j["status"] != "running" for j in d["jobs"]), timeout=10)
        assert done["counts"]["started"] == started and done["counts"]["success"] == started
        await asyncio.sleep(1.2)
        assert (await document(http, sub))["counts"]["started"] == started
        result = (await http.get("/api/jobs", params={"id": sub})).json()
        assert result[0]["status"] == "success"


async def test_client_isolation(make_node, host_service, client_address):
    echo = host_service("echo")
    async with make_node(_config(echo.url)) as node, node.client(client_address) as http:
        sub = await submit(http, subscription(0, 1, int(time.time()) + 3600))
        async with node.client(other_address(client_address)) as other:
            unknown = "00000000-0000-4000-8000-000000000000"
            for path in (sub, unknown, "not-a-uuid"):
                for method, suffix in (("GET", ""), ("GET", "/jobs"), ("DELETE", "")):
                    r = await other.request(method, f"/api/subscriptions/{path}{suffix}")
                    assert_error(r, 404, NOT_FOUND["error"])
            assert (await other.get("/api/subscriptions")).json() == []
            assert (await other.get("/api/jobs", params={"id": sub})).json() == []
        assert (await document(http, sub))["status"] == "active"


async def test_concurrent_requests_never_pass_the_quota(make_node, host_service, client_address):
    echo = host_service("echo")
    async with make_node(_config(echo.url, max_subscriptions=5)) as node, node.client(client_address) as http:
        future = int(time.time()) + 3600
        answers = await asyncio.gather(*(http.post("/api/jobs", json=subscription(0, 1, future)) for _ in range(20)))
        assert sorted(r.status_code for r in answers) == [200] * 5 + [400] * 15
        assert len((await http.get("/api/subscriptions", params={"active": "true"})).json()) == 5
