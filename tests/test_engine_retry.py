"""The Docker Engine absent, then appearing (SPEC §11): every reason says what happened,
jobs for a managed container that cannot come up fail at once with that reason, and the
node picks the engine up when it answers, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from app.containers.state import Readiness
from tests.helpers import job, submit
from tests.support import free_port, wait_finished

ENGINE = "/var/run/docker.sock"
#: Far longer than the test allows a job to take: a job that waits for it fails the test.
STARTUP_TIMEOUT = 120


def managed_config(socket_path: Path, image: str, labels: dict[str, str], port: int) -> dict[str, Any]:
    return {
        "manage_containers": True,
        "scheduler": {"poll_interval": 0.05},
        "docker": {"url": f"unix://{socket_path}", "network_mode": "host", "labels": labels},
        "containers": [{"id": "echo", "image": image, "port": port, "startup_timeout": STARTUP_TIMEOUT}],
    }


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


async def test_absent_engine_reason_and_jobs_fail_fast(make_node, client_address, tmp_path):
    socket_path = tmp_path / "docker.sock"  # nothing there
    config = managed_config(socket_path, "jobnode-test/none:1", {"jobnode.test": "1"}, free_port())
    async with make_node(config) as node, node.client(client_address) as http:
        state = node.node.containers.get("echo")
        await wait_for(lambda: state.readiness is Readiness.FAILED, 10, "the container FAILED")
        reason = (
            f"Docker Engine unreachable at unix://{socket_path}: FileNotFoundError: [Errno 2] No such file or directory"
        )
        assert state.last_error.startswith(reason), state.last_error
        health = (await http.get("/health")).json()
        assert health["containers"]["echo"].startswith(f"failed: {reason}"), health

        started = time.monotonic()
        job_id = await submit(http, job("echo"))
        result = (await wait_finished(http, [job_id], timeout=STARTUP_TIMEOUT / 2))[job_id]
        assert time.monotonic() - started < STARTUP_TIMEOUT / 4, "the job waited for a container that cannot come"
        assert result["status"] == "failed"
        assert result["result"]["container"] == "echo"
        assert result["result"]["error"].startswith(f"container not ready (failed: {reason}"), result


def test_no_socket_anywhere_means_the_default_socket(monkeypatch, tmp_path):
    """aiodocker finds no socket and fails with an empty AssertionError (the issue's
    "cannot use the Docker Engine at the default socket: "): the runtime then uses the
    default socket, so that an engine that starts later is found and failures say why."""
    import aiodocker.docker

    from app.config.loading import settings_from_dict
    from app.containers.engine import engine_error, open_client

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no docker context either
    monkeypatch.setattr(aiodocker.docker, "_sock_search_paths", [tmp_path / "none.sock"])
    with pytest.raises(AssertionError) as raised:
        aiodocker.Docker()
    assert engine_error(raised.value) == "AssertionError"  # never an empty reason

    settings = settings_from_dict({"containers": [{"id": "echo", "image": "x:1", "port": 1}]}, environ={})

    async def connector_path() -> str:
        docker = open_client(settings.docker)
        try:
            return docker.connector.path
        finally:
            await docker.close()

    assert asyncio.run(connector_path()) == "/var/run/docker.sock"


@contextlib.asynccontextmanager
async def forwarding_proxy(path: Path, target: str = ENGINE) -> AsyncIterator[None]:
    """A unix socket at ``path`` that forwards every connection to ``target``: the engine
    "appears" at ``path`` while the real one keeps serving the other tests. Leaving the
    block hangs up every connection and removes the socket: the engine is "lost"."""
    writers: set[asyncio.StreamWriter] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        engine_reader, engine_writer = await asyncio.open_unix_connection(target)
        writers.update((client_writer, engine_writer))
        await asyncio.gather(pipe(client_reader, engine_writer), pipe(engine_reader, client_writer))

    server = await asyncio.start_unix_server(forward, str(path))
    try:
        yield
    finally:
        server.close()
        path.unlink(missing_ok=True)
        for writer in writers:
            writer.close()


@pytest.mark.docker
@pytest.mark.xdist_group("docker")  # with every test of the Docker Engine
@pytest.mark.slow
async def test_engine_appearing_is_picked_up(make_node, client_address, tmp_path, caplog):
    """Needs the real engine (reached through a proxy at a path of this test's own);
    its containers carry ``jobnode.deploy-test=1`` and are removed at the end."""
    from tests.docker_support import ROOT, engine_problem, remove_containers
    from tests.support import unavailable

    if (problem := await engine_problem()) is not None:
        unavailable("Docker Engine", problem)
    socket_path = tmp_path / "docker.sock"
    config = managed_config(socket_path, "jobnode-deploy-test/echo:latest", {"jobnode.deploy-test": "1"}, free_port())
    config["containers"][0]["build"] = str(ROOT / "examples" / "echo")
    config["scheduler"]["node_id"] = node_id = f"jobnode-deploy-test-{time.monotonic_ns()}"
    try:
        async with make_node(config) as node, node.client(client_address) as http:
            state = node.node.containers.get("echo")
            await wait_for(lambda: state.readiness is Readiness.FAILED, 10, "the container FAILED")
            assert "No such file or directory" in state.last_error
            first = await submit(http, job("echo"))
            assert (await wait_finished(http, [first], timeout=30))[first]["status"] == "failed"

            async with forwarding_proxy(socket_path):
                # Picked up at the next attempt of the backoff (1, 2, 4 … s), built, started.
                await wait_for(lambda: state.ready, 90, "the container READY once the engine answers")
                second = await submit(http, job("echo", data={"n": 2}))
                result = (await wait_finished(http, [second], timeout=30))[second]
                assert (result["status"], result["result"]) == ("success", {"container": "echo", "output": {"n": 2}})

            # The engine is lost: the container still answers (as under live-restore), so
            # it keeps serving; meanwhile it is stopped behind the node's back.
            lost = f"Docker Engine lost at unix://{socket_path}: "
            await wait_for(lambda: lost in caplog.text, 10, "the node to notice the engine lost")
            assert state.ready, state.last_error
            async with aiodocker.Docker() as docker:
                await docker.containers.container(state.docker_id).stop(t=1)
            # The engine comes back: the node reconciles and brings the container back.
            async with forwarding_proxy(socket_path):
                await wait_for(lambda: state.restarts == 1 and state.ready, 90, "the container back after reconnect")
                third = await submit(http, job("echo", data={"n": 3}))
                result = (await wait_finished(http, [third], timeout=30))[third]
                assert result["status"] == "success", result
    finally:
        await remove_containers(f"jobnode.node={node_id}")
