"""Jobs through managed containers on the real Docker Engine, end to end over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import aiodocker
import pytest

from tests.docker_support import TEST_LABELS, new_node_id, service, wait_for
from tests.helpers import job, submit
from tests.support import wait_finished

# On one pytest-xdist worker, with every test of the Docker Engine (README, Development).
pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]


def _config(*containers: dict[str, Any]) -> dict[str, Any]:
    return {
        "manage_containers": True,
        "scheduler": {"node_id": new_node_id(), "poll_interval": 0.2, "shutdown_grace": 1},
        "docker": {"network_mode": "host", "labels": dict(TEST_LABELS)},
        "containers": list(containers),
    }


async def _all_ready(http, ids: set[str], timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = (await http.get("/info")).json()
        if {c["id"] for c in info["containers"]} >= ids:
            return
        assert asyncio.get_running_loop().time() < deadline, f"containers not ready: {info}"
        await asyncio.sleep(0.05)


async def test_chains_through_managed_containers(docker_engine, make_node, client_address):
    config = _config(
        service("echo", env={"MODE": "echo"}, description="returns its input"),
        service("times3", env={"MODE": "transform", "FACTOR": 3, "NAME": "t3"}, external=False),
        service("plus1", env={"MODE": "transform", "FACTOR": 1, "ADD": 1, "NAME": "p1"}),
        service("boom", env={"MODE": "fail"}),
    )
    async with make_node(config) as node, node.client(client_address) as http:
        await _all_ready(http, {"echo", "times3", "plus1", "boom"})
        info = (await http.get("/info")).json()
        assert {
            "id": "echo",
            "image": "jobnode-test/svc:latest",
            "external": True,
            "description": "returns its input",
        } in info["containers"]
        one = await submit(http, job("echo", data={"value": 5}))
        three = await submit(http, job("echo", "times3", "plus1", data={"value": 5}))
        failed = await submit(http, job("echo", "boom", "plus1", data={"value": 5}))
        results = await wait_finished(http, [one, three, failed])
    assert results[one]["result"] == {"container": "echo", "output": {"value": 5}}
    assert results[three]["status"] == "success"
    assert results[three]["result"] == {"container": "plus1", "output": {"value": 16, "seen": ["t3", "p1"]}}
    assert results[three]["intermediate_results"] == [
        {"container": "echo", "output": {"value": 5}},
        {"container": "times3", "output": {"value": 15, "seen": ["t3"]}},
    ]
    assert results[failed]["status"] == "failed"
    assert results[failed]["result"] == {"container": "boom", "error": 'HTTP 500: {"detail": "boom"}'}
    assert results[failed]["intermediate_results"] == [{"container": "echo", "output": {"value": 5}}]


async def test_killed_container_comes_back_and_jobs_succeed_again(docker_engine, make_node, client_address):
    config = _config(service("echo", env={"MODE": "echo"}))
    async with make_node(config) as node, node.client(client_address) as http:
        await _all_ready(http, {"echo"})
        first = await submit(http, job("echo", data={"n": 1}))
        assert (await wait_finished(http, [first]))[first]["status"] == "success"
        state = node.node.containers.get("echo")
        async with aiodocker.Docker() as docker:
            await docker.containers.container(state.docker_id).kill()
        await wait_for(lambda: not state.ready, 20, "the node to notice the kill")
        during = await submit(http, job("echo", data={"n": 2}))  # waits for the container, does not hang
        await _all_ready(http, {"echo"})
        assert state.restarts >= 1
        after = await submit(http, job("echo", data={"n": 3}))
        results = await wait_finished(http, [during, after], timeout=60)
    assert results[after]["result"] == {"container": "echo", "output": {"n": 3}}
    assert results[during]["status"] in ("success", "failed")
    if results[during]["status"] == "failed":  # a failure must say what happened
        assert results[during]["result"]["error"]


async def test_node_without_engine_still_serves(make_node, client_address):
    config = _config(service("echo", env={"MODE": "echo"}))
    config["docker"]["url"] = "unix:///nonexistent/docker.sock"
    async with make_node(config) as node, node.client(client_address) as http:
        await wait_for(lambda: node.node.containers.get("echo").last_error is not None, 20, "a reason")
        health = (await http.get("/health")).json()
        info = (await http.get("/info")).json()
        accepted = await http.post("/api/jobs", json=job("echo"))
    assert info["containers"] == []
    assert health["status"] == "healthy"
    assert "unreachable" in health["containers"]["echo"].lower()
    assert accepted.status_code == 200
