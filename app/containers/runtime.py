"""The container runtime: runs the node's managed containers on the Docker Engine and
probes the ones run elsewhere.

For each container the node manages (``Settings.managed``) a background task brings it
up (``lifecycle``); the engine's events tell when one dies and it is brought back
(``events``); an engine that is absent at start, or lost later, is reached again with
backoff (``engine``), meanwhile the managed containers that do not answer are FAILED with
what went wrong, so that their jobs fail at once with that reason, and once the engine
answers the containers are brought up (or checked, after a loss). Containers the node does
not manage are probed (``unmanaged``). Nothing blocks node start-up: ``start()`` only spawns
tasks, and engine problems never raise out of it.

``ContainerRuntime`` composes these and owns their background tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiodocker

from app.config.settings import Settings
from app.containers import engine
from app.containers.events import DeathWatch
from app.containers.lifecycle import Lifecycle, Managed
from app.containers.readiness import Prober
from app.containers.spec import container_name
from app.containers.state import ContainerStates, Readiness
from app.containers.unmanaged import UnmanagedProbes

log = logging.getLogger("jobnode.containers")


class ContainerRuntime:
    """Brings up and supervises the node's containers; see the module docstring."""

    #: Seconds between probes of a running unmanaged container (and after a failed one).
    probe_interval: float = 5.0

    def __init__(self, settings: Settings, states: ContainerStates, *, probe_interval: float | None = None) -> None:
        self._settings = settings
        self._states = states
        if probe_interval is not None:
            self.probe_interval = probe_interval
        self._docker: aiodocker.Docker | None = None
        self._prober = Prober(settings)
        self._managed: dict[str, Managed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._first_probes: list[asyncio.Task[Any]] = []
        self._lifecycle = Lifecycle(settings, self._prober, self._spawn)
        self._deaths = DeathWatch(settings, self._managed, self._lifecycle, self._spawn)
        self._probes = UnmanagedProbes(self._prober, self.probe_interval)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for state in self._states:
            if state.managed:
                self._managed[state.settings.id] = Managed(state.settings, state, container_name(state.settings))
                state.mark(Readiness.STARTING)
            elif state.settings.health_path:
                self._spawn(self._probes.health_loop(state), f"probe {state.settings.id}")
            else:
                first = self._spawn(self._probes.probe_port(state), f"first probe {state.settings.id}")
                self._first_probes.append(first)
                self._spawn(self._probes.port_loop(state, first), f"probe {state.settings.id}")
        if self._managed:
            self._spawn(self._supervise(), "docker supervisor")

    async def first_probes(self) -> None:
        """Wait for the first probe of each unmanaged container without a ``health_path``
        (a connect: at most ``PROBE_TIMEOUT`` each, all at once)."""
        await asyncio.gather(*self._first_probes, return_exceptions=True)

    async def stop(self) -> None:
        self._deaths.stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        docker, self._docker = self._docker, None
        if docker is not None:
            await engine.stop_events(docker)
            if self._settings.docker.stop_containers_on_shutdown:
                await asyncio.gather(
                    *(self._lifecycle.stop(docker, rec) for rec in self._managed.values() if rec.state.docker_id)
                )
            await engine.close(docker)
        await self._prober.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"jobnode.containers: {what}")
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s crashed", what, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    def _unreachable(self, reason: str) -> None:
        """The engine cannot be reached: each managed container that is not up fails with why."""
        for rec in self._managed.values():
            if not rec.up:
                rec.state.mark(Readiness.FAILED, reason)

    async def _supervise(self) -> None:
        """Connect, bring the containers up, follow them; when the engine is lost, connect
        again and bring back what did not survive."""
        first = True
        while True:
            docker, version = await engine.connect(self._settings.docker, self._unreachable)
            self._docker = docker
            log.info(
                "Docker Engine %s (API %s) at %s; bringing up %d container(s)",
                version.get("Version"),
                docker.api_version,
                engine.engine_address(self._settings.docker),
                len(self._managed),
            )
            for rec in self._managed.values():
                if not rec.up:
                    rec.state.mark(Readiness.STARTING)
                    rec.task = self._spawn(self._lifecycle.bring_up(docker, rec), f"bring up {rec.settings.id}")
            reason = await self._deaths.watch(docker, reconcile=not first)
            first = False
            self._docker = None
            await self._engine_lost(reason)
            await engine.close(docker)

    async def _engine_lost(self, reason: str) -> None:
        """The engine stopped answering: what was being done with it is abandoned, and a
        container that no longer answers is FAILED with the reason (one that still does,
        e.g. under the engine's live-restore, keeps serving)."""
        log.error("%s; reconnecting with backoff", reason)
        abandoned = [rec.task for rec in self._managed.values() if rec.busy and rec.task is not None]
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        for rec in self._managed.values():
            if rec.up and await self._lifecycle.answers(rec):
                continue
            rec.up = False
            rec.state.mark(Readiness.FAILED, f"{reason}; reconnecting")
