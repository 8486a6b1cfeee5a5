"""Bringing a managed container up: its image, create or adopt, start, wait until it
answers, give up with the tail of its logs, stop.

Readiness is a TCP connect to the port, or ``GET health_path``, until
``startup_timeout``; nothing is slept on a guess. Why a container is not ready is
always written to ``state.last_error`` in plain words and logged on ``jobnode.containers``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from app.config.settings import ContainerSettings, Settings
from app.containers.engine import docker_message, engine_error
from app.containers.images import ImageError, ensure_image, image_ref
from app.containers.readiness import Prober
from app.containers.spec import LABEL_CONTAINER, LABEL_MANAGED, LABEL_NODE, LABEL_SPEC, create_spec, spec_hash
from app.containers.state import ContainerState, Readiness

log = logging.getLogger("jobnode.containers")

#: Seconds ``docker stop`` waits before it kills.
STOP_TIMEOUT = 10
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000

#: Runs a coroutine in the background, named for what it does (the runtime owns the tasks).
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class BringUpFailed(Exception):
    """A container cannot be brought up; the message is the reason for ``last_error``."""


@dataclass(eq=False)
class Managed:
    """A container the node manages (``Settings.managed``) and what is being done with it."""

    settings: ContainerSettings
    state: ContainerState
    name: str
    #: The task bringing the container up or back; while it runs, it watches the container.
    task: asyncio.Task[None] | None = None
    #: The container came up and is expected to stay up: a death is a crash to recover from.
    up: bool = False

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


def failure_reason(exc: Exception, container_id: str, doing: str) -> str:
    """Why bringing a container up (or back) failed, in the words of ``last_error``."""
    if isinstance(exc, ImageError | BringUpFailed):
        return str(exc)
    if isinstance(exc, DockerError):
        return f"Docker Engine error: {docker_message(exc)}"
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        return f"Docker Engine error: {engine_error(exc)}"
    log.error("container %s: %s failed", container_id, doing, exc_info=exc)
    return f"unexpected error: {type(exc).__name__}: {exc}"


class Lifecycle:
    """Brings managed containers up on an engine and stops them."""

    def __init__(self, settings: Settings, prober: Prober, spawn: Spawn) -> None:
        self._settings = settings
        self._prober = prober
        self._spawn = spawn
        self._published = settings.docker.network_mode == "bridge"
        self._image_locks: dict[str, asyncio.Lock] = {}
        self._image_ids: dict[tuple[str, str | None], str] = {}

    async def answers(self, rec: Managed) -> bool:
        """Does the container answer its probe now?"""
        return await self._prober.probe(rec.settings, published=self._published) is None

    async def bring_up(self, docker: aiodocker.Docker, rec: Managed) -> None:
        container = rec.settings
        rec.up = False
        rec.state.mark(Readiness.STARTING)
        try:
            image_id = await self._image(docker, container)
            spec = create_spec(self._settings, container)
            digest = spec_hash(spec, image_id)
            spec["Labels"][LABEL_SPEC] = digest
            handle = await self._create_or_adopt(docker, rec, spec, digest)
            rec.state.docker_id = handle.id
            error = await self.wait_ready(rec, handle, container.startup_timeout)
        except Exception as exc:
            error = failure_reason(exc, container.id, "bring-up")
        if error is None:
            rec.up = True
            rec.state.mark(Readiness.READY)
            log.info("container %s: ready (%s, %s)", container.id, rec.name, (rec.state.docker_id or "")[:12])
        else:
            rec.state.mark(Readiness.FAILED, error)
            log.error("container %s: FAILED: %s", container.id, error)

    async def _image(self, docker: aiodocker.Docker, container: ContainerSettings) -> str:
        ref = image_ref(container)
        key = (ref, container.build)
        async with self._image_locks.setdefault(ref, asyncio.Lock()):
            if key not in self._image_ids:
                if container.build:
                    log.info("container %s: building image %s from %s", container.id, ref, container.build)
                self._image_ids[key] = await ensure_image(docker, container, self._settings.docker)
            return self._image_ids[key]

    async def _create_or_adopt(
        self, docker: aiodocker.Docker, rec: Managed, spec: dict[str, Any], digest: str
    ) -> DockerContainer:
        cid = rec.settings.id
        # This node's containers for this id under another name (the port changed): they
        # would hold the old port and answer for the new one, so they go.
        stale = await docker.containers.list(
            all=True, filters={"label": [f"{LABEL_NODE}={self._settings.node_id}", f"{LABEL_CONTAINER}={cid}"]}
        )
        for other in stale:
            if f"/{rec.name}" not in (other["Names"] or []):
                log.info("container %s: removing old container %s", cid, ",".join(other["Names"] or []))
                await other.delete(force=True)

        for attempt in range(2):
            try:
                existing: DockerContainer | None = await docker.containers.get(rec.name)
            except DockerError as exc:
                if exc.status != 404:
                    raise
                existing = None
            if existing is not None:
                labels = existing["Config"].get("Labels") or {}
                if labels.get(LABEL_MANAGED) != "1":
                    raise BringUpFailed(
                        f"a container named {rec.name} exists that jobnode did not create; remove or rename it"
                    )
                state = existing["State"]
                if labels.get(LABEL_SPEC) == digest:
                    if state.get("Running"):
                        log.info("container %s: adopting running %s (unchanged)", cid, rec.name)
                    else:
                        log.info("container %s: starting existing %s (unchanged)", cid, rec.name)
                        await self._start(existing, rec)
                    return existing
                log.info("container %s: re-creating %s (image or settings changed)", cid, rec.name)
                if state.get("Running"):
                    await existing.stop(t=STOP_TIMEOUT)
                await existing.delete(force=True)
            try:
                created = await docker.containers.create(spec, name=rec.name)
            except DockerError as exc:
                if exc.status == 409 and attempt == 0:
                    continue  # created meanwhile by another worker of this node: look again
                raise BringUpFailed(f"cannot create container {rec.name}: {docker_message(exc)}") from None
            log.info("container %s: created %s from %s", cid, rec.name, spec["Image"])
            await self._start(created, rec)
            return created
        raise BringUpFailed(f"cannot create container {rec.name}: the name stays taken")

    async def _start(self, handle: DockerContainer, rec: Managed) -> None:
        try:
            await handle.start()
        except DockerError as exc:
            raise BringUpFailed(f"cannot start container {rec.name}: {docker_message(exc)}") from None

    async def _logs_tail(self, handle: DockerContainer) -> str:
        try:
            lines = await handle.log(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        except DockerError:
            return ""
        text = "".join(lines).strip()
        if len(text) > LOG_TAIL_CHARS:
            text = "…" + text[-LOG_TAIL_CHARS:]
        return f"; last log lines:\n{text}" if text else "; it logged nothing"

    async def wait_ready(self, rec: Managed, handle: DockerContainer, timeout: float) -> str | None:
        """Probe until the container answers; the failure reason, or None when ready.

        A container that exits meanwhile (or that Docker's restart policy is restarting)
        fails at once with the tail of its logs, and is stopped so that it does not
        crash-loop behind the node's back.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        baseline: int | None = None
        interval = 0.05
        while True:
            reason = await self._prober.probe(rec.settings, published=self._published)
            if reason is None:
                return None
            info = await handle.show()
            state = info.get("State") or {}
            restarts = int(info.get("RestartCount") or 0)
            if baseline is None:
                baseline = restarts
            if not state.get("Running") or state.get("Restarting") or restarts > baseline:
                why = f"container exited during startup (exit code {state.get('ExitCode')})"
                if state.get("Error"):
                    why += f": {state['Error']}"
                return await self._give_up(handle, why)
            remaining = deadline - loop.time()
            if remaining <= 0:
                why = f"container did not answer on {self._prober.target(rec.settings)} within {timeout:g} s ({reason})"
                return await self._give_up(handle, why)
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 1.5, 0.5)

    async def _give_up(self, handle: DockerContainer, why: str) -> str:
        tail = await self._logs_tail(handle)
        # Stopped in the background: FAILED is reported now, not after the stop timeout
        # of a process that ignores SIGTERM.
        self._spawn(self._stop_quietly(handle), f"stop {handle.id[:12]}")
        return why + tail

    async def _stop_quietly(self, handle: DockerContainer) -> None:
        try:
            await handle.stop(t=STOP_TIMEOUT)
        except DockerError as exc:
            log.debug("cannot stop %s: %s", handle.id[:12], docker_message(exc))

    async def stop(self, docker: aiodocker.Docker, rec: Managed) -> None:
        """Stop a container at the node's shutdown (``docker.stop_containers_on_shutdown``)."""
        assert rec.state.docker_id is not None
        rec.up = False
        try:
            await docker.containers.container(rec.state.docker_id).stop(t=STOP_TIMEOUT)
        except DockerError as exc:
            if exc.status != 404:
                log.warning("container %s: cannot stop %s: %s", rec.settings.id, rec.name, docker_message(exc))
                return
        rec.state.mark(Readiness.STOPPED, "stopped by the node at shutdown")
        log.info("container %s: stopped %s", rec.settings.id, rec.name)
