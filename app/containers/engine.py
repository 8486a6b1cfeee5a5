"""Talking to the Docker Engine: where it is, a client for it, and reaching it with backoff.

An engine that is absent at start, or lost later, is tried again with backoff (1 s up to
30 s) for as long as the node runs; what went wrong is said in plain words, never empty,
and nothing here raises out of the node's start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from app.config.settings import DockerSettings
from app.formatting import error_text

log = logging.getLogger("jobnode.containers")

#: Where aiodocker looks first when neither ``docker.url`` nor DOCKER_HOST says.
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
#: Backoff between attempts to reach an absent or lost Docker Engine: 1, 2, 4 … 30 s.
ENGINE_RETRY_INITIAL = 1.0
ENGINE_RETRY_MAX = 30.0


class EventStream(Protocol):
    """aiodocker's event subscriber (unannotated there): the next event, None at the end."""

    async def get(self) -> dict[str, Any] | None: ...


def docker_message(exc: DockerError) -> str:
    return str(exc.message).strip() or repr(exc)


def engine_error(exc: BaseException) -> str:
    """What went wrong talking to the engine, never empty (``FileNotFoundError: [Errno 2]
    No such file or directory`` rather than aiohttp's "Cannot connect to host localhost:80")."""
    if isinstance(exc, DockerError) and exc.status == 900 and exc.__context__ is not None:
        exc = exc.__context__  # aiodocker's "Cannot connect to Docker Engine via …" wrapping
    if isinstance(exc, DockerError):
        return docker_message(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return error_text(exc.os_error)
    return error_text(exc)


def engine_address(settings: DockerSettings) -> str:
    """The engine's address as the operator would look for it."""
    return settings.url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL


def open_client(settings: DockerSettings) -> aiodocker.Docker:
    """aiodocker's client; with no ``docker.url`` and no socket there yet, the default
    socket, so that an engine that starts later is found (aiodocker itself fails then
    with an empty ``AssertionError``)."""
    # Connect fast or fail; long operations (build, pull, logs, events) lift the total.
    timeout = aiohttp.ClientTimeout(total=120, connect=10)
    try:
        return aiodocker.Docker(url=settings.url, timeout=timeout)
    except (AssertionError, ValueError):
        if settings.url is not None:
            raise
        return aiodocker.Docker(url=DEFAULT_DOCKER_URL, timeout=timeout)


async def connect(
    settings: DockerSettings, unreachable: Callable[[str], None]
) -> tuple[aiodocker.Docker, dict[str, Any]]:
    """A client whose engine answers, retried with backoff for as long as it takes.

    ``unreachable`` is told why after each failed attempt, so that the containers that
    need the engine fail at once with that reason instead of waiting for it."""
    delay, logged = ENGINE_RETRY_INITIAL, None
    while True:
        docker: aiodocker.Docker | None = None
        try:
            docker = open_client(settings)
            return docker, await docker.version()
        except Exception as exc:
            reason = f"Docker Engine unreachable at {engine_address(settings)}: {engine_error(exc)}"
        if docker is not None:
            await close(docker)
        unreachable(f"{reason}; retrying (backoff up to {ENGINE_RETRY_MAX:g} s)")
        if reason != logged:
            log.error("%s; managed containers are FAILED until it answers; retrying with backoff", reason)
            logged = reason
        await asyncio.sleep(delay)
        delay = min(delay * 2, ENGINE_RETRY_MAX)


async def close(docker: aiodocker.Docker) -> None:
    await stop_events(docker)
    try:
        await docker.close()
    except Exception:
        log.debug("closing the Docker client failed", exc_info=True)


def subscribe_events(docker: aiodocker.Docker, filters: dict[str, list[str]]) -> EventStream:
    subscribe = cast(Callable[..., EventStream], docker.events.subscribe)
    return subscribe(filters=filters)


async def stop_events(docker: aiodocker.Docker) -> None:
    """Stop aiodocker's events task, reading its exception so that none is lost."""
    task = docker.events.task
    if task is not None and task.done():
        if not task.cancelled() and task.exception() is not None:
            log.debug("docker events stream ended: %s", task.exception())
        docker.events.task = None
    try:
        await cast(Callable[[], Awaitable[None]], docker.events.stop)()
    except Exception:
        log.debug("stopping the docker events stream failed", exc_info=True)
        docker.events.task = None
