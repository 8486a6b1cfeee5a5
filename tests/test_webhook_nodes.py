"""Webhooks with real node processes (``jobnode serve``) and a real receiver: a node
SIGKILLed between its jobs' end and their delivery delivers them after its restart (the
outbox row was committed with the job's end), and two nodes on one PostgreSQL make each
attempt of each delivery once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from tests.support import NodeProcess, wait_finished
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow


def _config(url: str, service: Any, node_id: str, **webhooks: Any) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "manage_containers": False,
        "server": {"rate_limit": None},
        "scheduler": {"max_concurrent_jobs": 64, "lease_seconds": 3, "poll_interval": 0.2, "node_id": node_id},
        "containers": [{"id": "s0", "url": service.url, "concurrency": 64}],
        "webhooks": {"allowed_hosts": ["127.0.0.1"], "timeout": 2, **webhooks},
    }


async def _submit(node: NodeProcess, hook: str, count: int) -> list[str]:
    body = [{"containers": ["s0"], "data": {"job": str(i)}, "webhook": hook} for i in range(count)]
    async with node.client() as http:
        response = await http.post("/api/jobs/batch", json=body)
        assert response.status_code == 200, response.text
        ids = [answer["id"] for answer in response.json()]
        await wait_finished(http, ids)
    return ids


async def test_sigkill_between_the_end_and_the_delivery(tmp_path, host_service, fresh_url):
    service = host_service("echo")
    receiver = Receiver()  # down: the deliveries wait, retried
    node = NodeProcess(tmp_path, _config(fresh_url, service, "killed"), "killed").start()
    try:
        ids = await _submit(node, receiver.hook(), 20)
        node.kill()  # SIGKILL, its deliveries pending
        await receiver.start()
        await asyncio.sleep(1)
        assert receiver.received == []  # nobody delivers while the node is down
        node.start()
        await receiver.wait_for(20, timeout=30)
        await asyncio.sleep(0.5)
    finally:
        node.kill()
        await receiver.stop()
    assert sorted(r.json["id"] for r in receiver.received) == sorted(ids)  # every one, once
    assert all(r.json["status"] == "success" for r in receiver.received)


async def test_two_nodes_make_each_attempt_once(tmp_path, host_service, pg_fresh_url):
    url = pg_fresh_url
    service = host_service("echo")
    async with Receiver() as receiver:
        receiver.answers["hook"] = [500] * 150 + [200]  # the first 150 POSTs fail: retried
        nodes = [NodeProcess(tmp_path, _config(url, service, name, concurrency=4), name).spawn() for name in ("a", "b")]
        try:
            for node in nodes:
                node.wait_healthy()
            ids = await _submit(nodes[0], receiver.hook(), 100) + await _submit(nodes[1], receiver.hook(), 100)
            await receiver.wait_for(350, timeout=60)  # 150 failed attempts and 200 deliveries
            await asyncio.sleep(1.5)  # any duplicate would arrive meanwhile
        finally:
            for node in nodes:
                node.kill()
    attempts = Counter((r.delivery, r.headers["Jobnode-Attempt"]) for r in receiver.received)
    assert max(attempts.values()) == 1, [k for k, n in attempts.items() if n > 1]
    assert len(receiver.received) == 350
    assert {r.json["id"] for r in receiver.received} == set(ids)
    per_job = Counter(r.json["id"] for r in receiver.received)
    deliveries = {r.json["id"]: r.delivery for r in receiver.received}
    assert len(set(deliveries.values())) == 200 and sum(per_job.values()) == 350
