"""Real Docker Engine helpers for the container runtime tests.

Every container a test creates carries ``jobnode.test=1`` (``settings.docker.labels``)
and is removed by that label at the start and at the end of the session, and by its
node label at the end of each test. Containers run with host networking on free ports:
this machine has no bridge (see ENVIRONMENT.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from app.config.loading import settings_from_dict
from app.config.settings import Settings
from app.containers.images import build_image
from tests.support import free_port, unavailable

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "tests" / "services"
TEST_LABELS = {"jobnode.test": "1"}
TEST_IMAGE = "jobnode-test/svc:latest"
#: Images tagged by the build-from-context test; untagged at the end of the session.
BUILT_IMAGES: list[str] = []


async def engine_problem() -> str | None:
    """Why the Docker Engine cannot be used here, or None."""
    try:
        async with aiodocker.Docker() as docker:
            await asyncio.wait_for(docker.version(), 10)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def remove_containers(*labels: str) -> int:
    """Force-remove every container carrying all of ``labels`` (``key=value``)."""
    async with aiodocker.Docker() as docker:
        found = await docker.containers.list(all=True, filters={"label": list(labels)})
        for container in found:
            try:
                await container.delete(force=True)
            except DockerError as exc:
                if exc.status != 404:
                    raise
        return len(found)


async def _prepare_session() -> None:
    await remove_containers("jobnode.test=1")
    async with aiodocker.Docker() as docker:
        await build_image(docker, str(SERVICES), TEST_IMAGE)


async def _end_session() -> None:
    await remove_containers("jobnode.test=1")
    async with aiodocker.Docker() as docker:
        for tag in BUILT_IMAGES:
            try:
                await docker.images.delete(tag, force=True)
            except DockerError:
                pass


def docker_session() -> Iterator[None]:
    """Body of the session fixture: engine check, clean slate, test image built once."""
    problem = asyncio.run(engine_problem())
    if problem is not None:
        unavailable("Docker Engine", problem + " (start it with `bash .ci/docker.sh`)")
    asyncio.run(_prepare_session())
    try:
        yield
    finally:
        asyncio.run(_end_session())


def new_node_id() -> str:
    return f"jobnode-test-{uuid.uuid4().hex[:10]}"


def runtime_settings(
    containers: list[dict[str, Any]],
    *,
    node_id: str,
    docker: dict[str, Any] | None = None,
    **top: Any,
) -> Settings:
    raw: dict[str, Any] = {
        "manage_containers": True,
        "scheduler": {"node_id": node_id},
        "docker": {"network_mode": "host", "labels": dict(TEST_LABELS), **(docker or {})},
        "containers": containers,
    }
    raw.update(top)
    return settings_from_dict(raw, environ={})


def service(container_id: str, port: int | None = None, **keys: Any) -> dict[str, Any]:
    """A managed container running the test service image."""
    entry: dict[str, Any] = {
        "id": container_id,
        "image": TEST_IMAGE,
        "port": port or free_port(),
        "startup_timeout": 20,
    }
    entry.update(keys)
    return entry


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def call_service(base_url: str, data: Any) -> tuple[int, Any]:
    """``POST /service_output`` as the node would (SPEC §3)."""
    body = {"source": 1, "destination": 1, "data": data, "requires_proof": False}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/service_output", json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status, await r.json(content_type=None)


async def inspect(docker_id: str) -> dict[str, Any] | None:
    async with aiodocker.Docker() as docker:
        try:
            return await docker.containers.container(docker_id).show()
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise


@asynccontextmanager
async def host_service(port: int, mode: str = "echo") -> AsyncIterator[asyncio.subprocess.Process]:
    """The test service as a plain process on the host (not a container)."""
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MODE": mode}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SERVICES / "server.py"), env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def recorder(state: Any) -> list[tuple[str, str | None]]:
    """Record every transition of a ContainerState (observes; changes nothing)."""
    transitions: list[tuple[str, str | None]] = []
    original = state.mark

    def mark(readiness: Any, error: str | None = None) -> None:
        transitions.append((readiness.value, error))
        original(readiness, error)

    state.mark = mark
    return transitions
