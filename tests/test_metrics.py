"""``GET /metrics``: Prometheus text from Litestar's plugin, the job histograms and counters
of ``app.metrics`` and the queue's gauges from SQL; on SQLite and PostgreSQL.

The histograms and counters live in the process-wide registry that every node of this
test process shares, so each test uses container ids of its own and compares before
and after.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from app.clock import utcnow
from app.db.models import JobStatus
from tests.conftest import STANDARD_CONFIG
from tests.helpers import assert_error, job, submit
from tests.operator_support import (
    TOKEN,
    add_job,
    bearer,
    container,
    metric,
    parse_metrics,
    scheduled,
    set_job,
    wait_for,
)
from tests.support import wait_finished

STATES = ("active", "completed", "cancelled")


async def _scrape(http, **kwargs) -> dict:
    r = await http.get("/metrics", **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse_metrics(r.text)


async def test_job_and_step_metrics(make_node, host_service, client_address):
    echo, fail = host_service("echo"), host_service("fail")
    ok, bad = f"ok-{client_address}", f"bad-{client_address}"
    config = scheduled(container(ok, echo.url), container(bad, fail.url))
    async with make_node(config) as node, node.client(client_address) as http:
        before = await _scrape(http)
        ids = [await submit(http, job(ok, data={"i": i})) for i in range(3)]
        ids.append(await submit(http, job(ok, bad)))
        await wait_finished(http, ids)

        async def caught_up() -> dict | None:
            # A job's counters move right after the commit that makes its result readable,
            # so a client can see the result a moment before the counters show it.
            scraped = await _scrape(http)
            finished = metric(scraped, "jobnode_jobs_finished_total", status="success")
            return scraped if finished - metric(before, "jobnode_jobs_finished_total", status="success") >= 3 else None

        after = await wait_for(caught_up, timeout=5)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("jobnode_step_duration_seconds_count", container=ok, outcome="ok") == 4
    assert delta("jobnode_step_duration_seconds_count", container=bad, outcome="error") == 1
    assert delta("jobnode_step_duration_seconds_bucket", container=ok, outcome="ok", le="+Inf") == 4
    assert delta("jobnode_step_duration_seconds_sum", container=ok, outcome="ok") > 0
    assert delta("jobnode_job_queue_wait_seconds_count", container=ok) == 4
    assert delta("jobnode_container_errors_total", container=bad, kind="http_status") == 1
    assert delta("jobnode_jobs_finished_total", status="success") >= 3
    assert delta("jobnode_jobs_finished_total", status="failed") >= 1
    assert delta("jobnode_job_duration_seconds_count", status="success") >= 3
    # The claim loop claims once when the scheduler starts (jobs submitted to an idle node
    # are claimed by their INSERT instead), so its histogram has that claim at least.
    assert metric(after, "jobnode_claim_seconds_count") >= 1
    assert metric(after, "jobnode_claim_seconds_bucket", le="+Inf") == metric(after, "jobnode_claim_seconds_count")
    # This node's containers, and Litestar's HTTP metrics grouped by route template.
    assert metric(after, "jobnode_container_ready", container=ok) == 1
    assert metric(after, "jobnode_container_in_flight", container=ok) == 0
    assert metric(after, "jobnode_container_restarts_total", container=ok) == 0
    assert (
        delta("jobnode_http_requests_total", method="POST", path="/api/jobs", status_code="200", app_name="jobnode")
        == 4
    )
    assert metric(after, "jobnode_database_up") == 1


async def test_queue_gauges_from_sql(make_node, client_address):
    async with make_node(STANDARD_CONFIG) as node, node.client(client_address) as http:  # scheduler off
        before = await _scrape(http)
        old, running = str(uuid.uuid4()), str(uuid.uuid4())
        await add_job(node.node.database, old, client=client_address, created_at=utcnow() - timedelta(seconds=90))
        await add_job(node.node.database, running, client=client_address, status=JobStatus.RUNNING)
        for _ in range(3):
            await submit(http)
        after = await _scrape(http)
        pending = metric(after, "jobnode_jobs", state="pending", source="offchain")
        assert pending - metric(before, "jobnode_jobs", state="pending", source="offchain") == 4
        assert (
            metric(after, "jobnode_jobs", state="running", source="offchain")
            - metric(before, "jobnode_jobs", state="running", source="offchain")
            == 1
        )
        assert metric(after, "jobnode_jobs", state="pending", source="onchain") == 0
        assert metric(after, "jobnode_queue_depth") == pending
        assert metric(after, "jobnode_oldest_pending_age_seconds") >= 90
        # The HTTP metrics group job ids under their route template.
        await http.get(f"/api/jobs/{old}")
        text = (await http.get("/metrics")).text
        assert 'path="/api/jobs/{job_id}"' in text and old not in text
        # Leave nothing running without a lease in the shared database.
        await set_job(node.node.database, running, status=JobStatus.SUCCESS, finished_at=utcnow())


async def test_rescued_retried_and_cancelled_jobs_are_counted(make_node, host_service, client_address):
    echo = host_service("echo")
    cid = f"r-{client_address}"
    async with make_node(scheduled(container(cid, echo.url))) as node, node.client(client_address) as http:
        before = await _scrape(http)
        # A job whose node died: running, its lease expired. The reaper re-queues it.
        orphan = str(uuid.uuid4())
        await add_job(
            node.node.database,
            orphan,
            client=client_address,
            containers=[cid],
            status=JobStatus.RUNNING,
            lease_owner="dead-node",
            lease_expires_at=utcnow() - timedelta(seconds=5),
        )
        await wait_finished(http, [orphan])
        # A failed job re-queued by an operator, and a cancelled one.
        failed = str(uuid.uuid4())
        await add_job(
            node.node.database,
            failed,
            client=client_address,
            containers=[cid],
            status=JobStatus.FAILED,
            steps=[{"container": cid, "error": "boom"}],
        )
        assert (await http.post(f"/api/jobs/{failed}/retry")).status_code == 200
        await wait_finished(http, [failed])
        pending = str(uuid.uuid4())
        await add_job(
            node.node.database,
            pending,
            client=client_address,
            containers=[cid],
            created_at=utcnow() + timedelta(hours=1),
        )  # not runnable yet: stays pending
        assert (await http.delete(f"/api/jobs/{pending}")).status_code == 200
        after = await wait_for(lambda: _rescued(http, before))

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("jobnode_jobs_rescued_total", outcome="requeued") >= 1
    assert delta("jobnode_jobs_retried_total") == 1
    assert delta("jobnode_jobs_finished_total", status="cancelled") == 1


async def _rescued(http, before: dict) -> dict | None:
    after = await _scrape(http)
    return (
        after
        if metric(after, "jobnode_jobs_rescued_total", outcome="requeued")
        > metric(before, "jobnode_jobs_rescued_total", outcome="requeued")
        else None
    )


async def test_metrics_are_an_operator_endpoint_and_not_rate_limited(make_node, client_address):
    config = {**STANDARD_CONFIG, "server": {"operator_token": TOKEN, "rate_limit": {"num_requests": 2, "period": 60}}}
    async with make_node(config) as node, node.client(client_address) as http:
        assert_error(await http.get("/metrics"), 401, "Operator token required")
        for _ in range(5):
            assert (await http.get("/metrics", headers=bearer())).status_code == 200


async def test_subscriptions_by_state(make_node, host_service, client_address):
    """``jobnode_subscriptions`` counts each state: active, completed (its one interval
    ran), cancelled; every state is there even at 0. The database is shared with other
    tests: counted from before."""
    echo = host_service("echo")
    async with make_node(scheduled(container("echo", echo.url))) as node, node.client(client_address) as http:

        def by_state(scraped: dict) -> dict[str, float]:
            return {state: metric(scraped, "jobnode_subscriptions", state=state) for state in STATES}

        scraped = await _scrape(http)
        assert all(("jobnode_subscriptions", frozenset({("state", state)})) in scraped for state in STATES)
        before = by_state(scraped)
        later = int(time.time()) + 3600
        for _ in range(2):
            await submit(http, job("echo", subscription={"period": 60, "frequency": 2, "active_at": later}))
        cancelled = await submit(http, job("echo", subscription={"period": 0, "frequency": 1, "active_at": later}))
        assert (await http.delete(f"/api/subscriptions/{cancelled}")).status_code == 200
        now = await submit(http, job("echo", subscription={"period": 0, "frequency": 1}))

        async def completed() -> bool:
            return (await http.get(f"/api/subscriptions/{now}")).json()["status"] == "completed"

        await wait_for(completed, timeout=10)
        after = by_state(await _scrape(http))
        delta = {state: after[state] - before[state] for state in STATES}
        # A subscription of an earlier test may complete meanwhile (this node ticks it):
        # it moves from active to completed, and is counted as such, but no more.
        others = delta["completed"] - 1
        assert delta == {"active": 2 - others, "completed": 1 + others, "cancelled": 1}
        assert others >= 0
