"""Webhooks (issue 18, SPEC §9) on both databases, against a real receiver (an aiohttp
server in this process, ``tests/webhook_receiver.py``): the request's checks, the signed
POST and its body, retries with their backoff, 3xx/4xx/5xx/slow receivers, SSRF refusals,
every way a job ends (chain, cancel, reaper, subscription interval), a poisoned group
commit, the operator's view and re-send. Process-level tests (SIGKILL, two nodes) are in
``tests/test_webhook_nodes.py``."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from app.cli import main
from app.clock import utcnow
from app.db.batching import GroupCommit
from app.db.statements.submits import INSERT_JOBS
from app.db.statements.webhooks import INSERT_DELIVERIES
from app.jobs.outbox import delivery_row
from app.jobs.requests import JobRequest
from app.jobs.rows import pending_row
from app.jobs.transitions import JobStore
from app.jobs.values import ClaimedJob, StepResult
from tests.helpers import assert_error, assert_invalid_request, job, submit
from tests.support import wait_finished
from tests.webhook_receiver import Receiver

SECRET = "wh-secret-✓"
README = Path(__file__).resolve().parents[1] / "README.md"


def _config(url: str, allowed: list[str] | None = None, **webhooks: Any) -> dict[str, Any]:
    return {
        "scheduler": {"poll_interval": 0.2},
        "containers": [{"id": "echo", "url": url}],
        "server": {"rate_limit": None},
        "webhooks": {"allowed_hosts": ["127.0.0.1"] if allowed is None else allowed, **webhooks},
    }


async def _detail(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def _settled(http: httpx.AsyncClient, job_id: str, timeout: float = 20) -> dict[str, Any]:
    """The job's detail once none of its deliveries is pending."""
    deadline = time.monotonic() + timeout
    while True:
        detail = await _detail(http, job_id)
        deliveries = (detail["webhook"] or {}).get("deliveries", [])
        if deliveries and all(d["status"] != "pending" for d in deliveries):
            return detail
        assert time.monotonic() < deadline, detail["webhook"]
        await asyncio.sleep(0.05)


def _readme_verify() -> Any:
    """The README's verification snippet, run as it is."""
    text = README.read_text()
    section = text[text.index("### Webhooks") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet is not None
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    return namespace["verify"]


async def test_the_request_form_and_the_allow_list(make_node, host_service, client_address):
    echo = host_service("echo")
    allowed = ["127.0.0.1", "hooks.example.com", "*.example.net", "10.0.0.0/8"]
    async with make_node(_config(echo.url, allowed)) as node, node.client(client_address) as http:
        for bad, why in [
            (123, "webhook"),
            (["http://127.0.0.1/"], "webhook"),
            ("ftp://127.0.0.1/x", "webhook is not an absolute http(s) URL"),
            ("/relative/path", "webhook is not an absolute http(s) URL"),
            ("http://", "webhook is not an absolute http(s) URL"),
            ("http://127.0.0.1:99999/", "webhook is not an absolute http(s) URL"),
            ("http://a b.example.com/", "webhook is not an absolute http(s) URL"),
            ("http://127.0.0.1/\x00", "webhook is not an absolute http(s) URL"),
            ("http://user:pw@127.0.0.1/", "webhook must not carry credentials"),
            ("http://127.0.0.1/" + "a" * 2048, "webhook is longer than 2048 characters"),
        ]:
            r = await http.post("/api/jobs", json=job("echo", webhook=bad))
            assert r.status_code == 400, r.text
            assert_invalid_request(r.json(), why)
        for refused in [
            "http://example.org/hook",  # not listed
            "http://127.0.0.2/hook",  # an IP literal not listed
            "http://[::1]/hook",
            "http://2130706433/hook",  # 127.0.0.1 as one number: a name, not listed
            "http://example.net/hook",  # *.example.net is its sub-domains only
            "http://hooks.example.com.evil.org/",
        ]:
            r = await http.post("/api/jobs", json=job("echo", webhook=refused))
            assert_error(r, 400, "Webhook not allowed", {"url": refused})
        # Checked after the containers: an unknown container is told first.
        r = await http.post("/api/jobs", json=job("nope", webhook="http://example.org/"))
        assert_error(r, 400, "Container not supported", {"container": "nope"})
        for fine in [
            "http://127.0.0.1:1/x",
            "https://HOOKS.example.com./x?y=1",
            "https://a.b.example.net/",
            "http://10.1.2.3:8080/",
        ]:
            await submit(http, job("echo", webhook=fine))
        # A batch: the refused item alone.
        r = await http.post(
            "/api/jobs/batch", json=[job("echo", webhook="http://example.org/"), job("echo", webhook=None)]
        )
        answers = r.json()
        assert answers[0] == {"error": "Webhook not allowed", "params": {"url": "http://example.org/"}}
        assert set(answers[1]) == {"id"}
        r = await http.post("/api/jobs/stream", json=job("echo", webhook="http://127.0.0.1:1/"))
        assert_error(r, 400, "Streaming does not support webhooks")


async def test_no_webhook_is_allowed_by_default(make_node, host_service, client_address):
    echo = host_service("echo")
    async with make_node(_config(echo.url, [])) as node, node.client(client_address) as http:
        r = await http.post("/api/jobs", json=job("echo", webhook="http://127.0.0.1/"))
        assert_error(r, 400, "Webhook not allowed", {"url": "http://127.0.0.1/"})


async def test_a_signed_delivery_of_the_job_result(make_node, host_service, client_address):
    echo = host_service("echo")
    verify = _readme_verify()
    async with Receiver() as receiver:
        config = _config(echo.url, secret=SECRET)
        async with make_node(config) as node, node.client(client_address) as http:
            plain = await submit(http, job("echo", data={"n": 1}))
            job_id = await submit(http, job("echo", "echo", data={"n": "ünï"}, webhook=receiver.hook()))
            (got,) = await receiver.wait_for(1)
            await wait_finished(http, [plain, job_id])
            r = await http.get("/api/jobs", params={"id": job_id, "intermediate": "true"})
            assert got.json == r.json()[0]
            assert got.json["status"] == "success" and got.json["intermediate_results"] == [
                {"container": "echo", "output": {"n": "ünï"}}
            ]
            assert got.headers["Content-Type"] == "application/json"
            assert got.headers["Jobnode-Event"] == "job.finished" and got.headers["Jobnode-Attempt"] == "1"
            assert verify(SECRET, got.headers["Jobnode-Signature"], got.body)
            assert not verify("another secret", got.headers["Jobnode-Signature"], got.body)
            assert not verify(SECRET, got.headers["Jobnode-Signature"], got.body + b" ")

            detail = await _settled(http, job_id)
            (delivery,) = detail["webhook"]["deliveries"]
            assert detail["webhook"]["url"] == receiver.hook()
            assert delivery["id"] == got.delivery and delivery["status"] == "delivered"
            assert delivery["next_attempt_at"] is None and delivery["last_error"] is None
            assert [(a["attempt"], a["status_code"], a["error"]) for a in delivery["attempts"]] == [(1, 200, None)]
            assert datetime.fromisoformat(delivery["created_at"]) == datetime.fromisoformat(detail["finished_at"])
            assert (await _detail(http, plain))["webhook"] is None
            metrics = (await http.get("/metrics")).text
            assert re.search(r'jobnode_webhook_deliveries_total\{outcome="delivered"\} [1-9]', metrics)
            assert re.search(r"jobnode_webhook_delivery_seconds_count [1-9]", metrics)
        assert len(receiver.received) == 1


async def test_receiver_down_then_up_every_delivery_arrives(make_node, host_service, client_address):
    echo = host_service("echo")
    receiver = Receiver()  # down at first: connections refused
    async with make_node(_config(echo.url)) as node, node.client(client_address) as http:
        ids = [await submit(http, job("echo", data={"n": n}, webhook=receiver.hook())) for n in range(3)]
        await wait_finished(http, ids)
        await asyncio.sleep(3.6)  # attempts at about 0, 1 and 3 s
        await receiver.start()
        try:
            await receiver.wait_for(3, timeout=20)
            details = [await _settled(http, job_id) for job_id in ids]
        finally:
            await receiver.stop()
    assert sorted(r.json["id"] for r in receiver.received) == sorted(ids)
    for detail in details:
        (delivery,) = detail["webhook"]["deliveries"]
        attempts = delivery["attempts"]
        assert delivery["status"] == "delivered" and attempts[-1]["status_code"] == 200
        assert len(attempts) >= 3 and all(a["error"].startswith("cannot connect") for a in attempts[:-1])
        started = [datetime.fromisoformat(a["started_at"]) for a in attempts]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(started)]
        # 1 s, 2 s, 4 s … after each failure: never sooner, and not much later.
        for n, gap in enumerate(gaps[:-1]):
            assert 2**n <= gap < 2**n + 0.8, gaps
        arrived = next(r for r in receiver.received if r.json["id"] == detail["id"])
        assert arrived.headers["Jobnode-Attempt"] == str(len(attempts))


async def test_redirects_errors_and_slow_receivers(make_node, host_service, client_address):
    echo = host_service("echo")
    async with Receiver() as receiver:
        receiver.answers["moved"] = [("redirect", receiver.hook("target"))]
        receiver.answers["flaky"] = [500, 404, 200]
        receiver.answers["slow"] = [("slow", 3)]
        config = _config(echo.url, timeout=0.5, max_attempts=3)
        async with make_node(config) as node, node.client(client_address) as http:
            moved = await submit(http, job("echo", webhook=receiver.hook("moved")))
            flaky = await submit(http, job("echo", webhook=receiver.hook("flaky")))
            slow = await submit(http, job("echo", webhook=receiver.hook("slow")))
            moved_detail, flaky_detail, slow_detail = [await _settled(http, job_id) for job_id in (moved, flaky, slow)]
            metrics = (await http.get("/metrics")).text
    (delivery,) = moved_detail["webhook"]["deliveries"]
    assert delivery["status"] == "failed" and delivery["last_error"] == "HTTP 302"
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 302, 302]
    assert receiver.of("target") == [] and len(receiver.of("moved")) == 3  # never followed
    (delivery,) = flaky_detail["webhook"]["deliveries"]
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 404, 200]
    assert [r.headers["Jobnode-Attempt"] for r in receiver.of("flaky")] == ["1", "2", "3"]
    assert len({r.delivery for r in receiver.of("flaky")}) == 1  # one delivery, three attempts
    (delivery,) = slow_detail["webhook"]["deliveries"]
    assert delivery["status"] == "failed"
    assert [a["error"] for a in delivery["attempts"]] == ["timed out after 0.5 s"] * 3
    for attempt in delivery["attempts"]:
        took = datetime.fromisoformat(attempt["finished_at"]) - datetime.fromisoformat(attempt["started_at"])
        assert took < timedelta(seconds=1.5)
    assert re.search(r'jobnode_webhook_deliveries_total\{outcome="retried"\} [1-9]', metrics)
    assert re.search(r'jobnode_webhook_deliveries_total\{outcome="failed"\} [1-9]', metrics)


async def test_ssrf_refused(make_node, host_service, client_address):
    """A listed name that resolves to a loopback address, and redirects to a forbidden
    host: refused, the receiver never reached there."""
    echo = host_service("echo")
    async with Receiver() as receiver:
        receiver.answers["moved"] = [("redirect", receiver.hook("target", host="localhost"))]
        async with make_node(_config(echo.url, ["localhost"])) as node, node.client(client_address) as http:
            named = await submit(http, job("echo", webhook=receiver.hook("named", host="localhost")))
            named_detail = await _settled(http, named)
            metrics = (await http.get("/metrics")).text
            # A delivery whose host the list no longer allows (it changed since the submit):
            # checked again at the attempt.
            async with node.node.database.direct_write() as conn:
                await conn.insert_many(INSERT_DELIVERIES, [delivery_row(named, receiver.hook("late"), utcnow())])
            node.node.signal.webhooks_changed()
            late = [d for d in (await _settled(http, named))["webhook"]["deliveries"] if d["url"].endswith("/late")]
            assert late[0]["status"] == "failed"
            assert late[0]["last_error"] == "refused: webhooks.allowed_hosts does not allow this host"
        config = _config(echo.url, ["127.0.0.1"], max_attempts=2)
        async with make_node(config) as node, node.client(client_address) as http:
            moved = await submit(http, job("echo", webhook=receiver.hook("moved")))
            moved_detail = await _settled(http, moved)
    (delivery,) = named_detail["webhook"]["deliveries"]
    assert delivery["status"] == "failed" and len(delivery["attempts"]) == 1  # not retried
    assert delivery["last_error"].startswith("refused: localhost resolves to "), delivery
    assert "webhooks.allowed_hosts does not allow" in delivery["last_error"]
    assert delivery["attempts"][0]["status_code"] is None
    assert receiver.of("named") == [] and receiver.of("target") == [] and receiver.of("late") == []
    assert re.search(r'jobnode_webhook_deliveries_total\{outcome="refused"\} [1-9]', metrics)
    (delivery,) = moved_detail["webhook"]["deliveries"]
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 302]


async def test_a_name_with_its_address_range_listed_is_delivered(make_node, host_service, client_address):
    echo = host_service("echo")
    async with Receiver() as receiver:
        config = _config(echo.url, ["localhost", "127.0.0.0/8"])
        async with make_node(config) as node, node.client(client_address) as http:
            job_id = await submit(http, job("echo", webhook=receiver.hook("named", host="localhost")))
            detail = await _settled(http, job_id)
    assert detail["webhook"]["deliveries"][0]["status"] == "delivered"
    assert len(receiver.of("named")) == 1


async def test_cancelled_reaped_and_interval_jobs_deliver(make_node, host_service, client_address):
    slow, echo = host_service("slow", DELAY=30), host_service("echo")
    async with Receiver() as receiver:
        config = _config(echo.url)
        config["containers"].append({"id": "slow", "url": slow.url})
        config["scheduler"].update({"lease_seconds": 1, "max_attempts": 1})
        async with make_node(config) as node, node.client(client_address) as http:
            cancelled = await submit(http, job("slow", webhook=receiver.hook("cancelled")))
            await asyncio.sleep(0.5)
            r = await http.delete(f"/api/jobs/{cancelled}")
            assert r.status_code == 200, r.text
            (got,) = await receiver.wait_for(1, "cancelled")
            assert got.json == {
                "id": cancelled,
                "status": "failed",
                "result": {"container": "slow", "error": "cancelled"},
                "intermediate_results": [],
            }

            # A job whose node died holding it, out of attempts: the reaper fails it.
            now = utcnow()
            request = JobRequest(containers=["echo"], data={}, webhook=receiver.hook("reaped"))
            row = {
                **pending_row(request, client_address, now),
                "status": "running",
                "attempts": 1,
                "lease_owner": "a-dead-node",
                "lease_expires_at": now - timedelta(seconds=5),
                "started_at": now,
            }
            async with node.node.database.direct_write() as conn:
                await conn.insert_many(INSERT_JOBS, [row])
            (got,) = await receiver.wait_for(1, "reaped", timeout=15)
            assert got.json["id"] == row["id"] and got.json["status"] == "failed"
            assert "gave up after 1 attempts" in got.json["result"]["error"]

            subscription = await submit(
                http,
                job(
                    "echo", data={"s": 1}, webhook=receiver.hook("interval"), subscription={"period": 2, "frequency": 2}
                ),
            )
            got = await receiver.wait_for(2, "interval", timeout=20)
            r = await http.get(f"/api/subscriptions/{subscription}")
            interval_jobs = {j["id"] for j in r.json()["jobs"]}
            assert {g.json["id"] for g in got} == interval_jobs and len(interval_jobs) == 2
            assert all(g.json["status"] == "success" for g in got)


async def test_a_poisoned_group_commit_delivers_each_good_job_once(make_node, client_address):
    """The step commit of many jobs fails as a whole for one bad item (here a step already
    committed: a unique violation on either database); done again one by one, the good
    job ends with exactly one delivery row, and the bad item alone fails, writing nothing."""
    async with make_node({"scheduler": {"enabled": False}, "webhooks": {"allowed_hosts": ["127.0.0.1"]}}) as node:
        database = node.node.database
        store = JobStore(database, "poison-node", 30)
        now = utcnow()
        rows = []
        for containers in (["echo"], ["echo", "echo"]):
            request = JobRequest(containers=containers, data={}, webhook="http://127.0.0.1:1/hook")
            rows.append({**pending_row(request, client_address, now), **store.claimed_columns(now)})
        async with database.direct_write() as conn:
            await conn.insert_many(INSERT_JOBS, rows)
        good = ClaimedJob(rows[0]["id"], ["echo"], {}, False, 1, now)
        bad = ClaimedJob(rows[1]["id"], ["echo", "echo"], {}, False, 1, now)
        await store.record_step(StepResult(bad, 0, now, output={"n": 1}))  # its first step
        commit: GroupCommit[StepResult, Any] = GroupCommit(store.record_steps)
        results = await asyncio.gather(
            commit(StepResult(good, 0, now, output={"ok": True})),
            commit(StepResult(bad, 0, now, output={"again": True})),  # that step again: refused
            return_exceptions=True,
        )
        assert results[0] is None and isinstance(results[1], Exception), results
        async with node.client(client_address) as http:
            good_detail = await _detail(http, good.id)
            bad_detail = await _detail(http, bad.id)
    assert good_detail["status"] == "success"
    assert len(good_detail["webhook"]["deliveries"]) == 1
    assert bad_detail["status"] == "running" and bad_detail["webhook"]["deliveries"] == []


async def test_resend(make_node, host_service, client_address):
    echo, slow = host_service("echo"), host_service("slow", DELAY=30)
    async with Receiver() as receiver:
        config = _config(echo.url)
        config["containers"].append({"id": "slow", "url": slow.url})
        async with make_node(config) as node, node.client(client_address) as http:
            job_id = await submit(http, job("echo", webhook=receiver.hook()))
            await _settled(http, job_id)
            r = await http.post(f"/api/jobs/{job_id}/webhook")
            assert r.status_code == 200, r.text
            first, second = r.json()["webhook"]["deliveries"]
            assert second["status"] == "pending" or second["status"] == "delivered"
            got = await receiver.wait_for(2)
            assert [g.delivery for g in got] == [first["id"], second["id"]]
            assert got[0].json == got[1].json

            plain = await submit(http, job("echo"))
            await wait_finished(http, [plain])
            assert_error(await http.post(f"/api/jobs/{plain}/webhook"), 409, "Job has no webhook")
            running = await submit(http, job("slow", webhook=receiver.hook()))
            assert_error(await http.post(f"/api/jobs/{running}/webhook"), 409, "Job has not ended")
            unknown = "00000000-0000-4000-8000-000000000000"
            assert_error(await http.post(f"/api/jobs/{unknown}/webhook"), 404, "Job not found")
            await http.delete(f"/api/jobs/{running}")


async def test_failing_endpoints_on_the_dashboard_and_in_the_cli(
    make_node, host_service, client_address, database_url, tmp_path
):
    echo = host_service("echo")
    async with Receiver() as receiver:
        receiver.answers["broken"] = [503]
        config = _config(echo.url, max_attempts=1)
        async with make_node(config) as node, node.client(client_address) as http:
            broken = await submit(http, job("echo", webhook=receiver.hook("broken")))
            await _settled(http, broken)
            data = (await http.get("/dashboard/data")).json()
            page = (await http.get("/dashboard")).text
        failing = {w["url"]: w for w in data["webhooks"]}
        assert failing[receiver.hook("broken")]["state"] == "failed"
        assert failing[receiver.hook("broken")]["error"] == "HTTP 503"
        assert receiver.hook("broken") in page

        path = tmp_path / "jobnode.json"
        path.write_text(json.dumps({"database": {"url": database_url}}))
        listed = await asyncio.to_thread(CliRunner().invoke, main, ["webhooks", "list", "--config", str(path)])
        assert listed.exit_code == 0, listed.output
        line = next(x for x in listed.output.splitlines() if receiver.hook("broken") in x)
        assert "failed" in line and "HTTP 503" in line
        shown = await asyncio.to_thread(CliRunner().invoke, main, ["jobs", "show", broken, "--config", str(path)])
        assert shown.exit_code == 0, shown.output
        assert f"webhook {receiver.hook('broken')}" in shown.output and "HTTP 503" in shown.output
