"""Following the deaths of the node's managed containers and bringing them back.

Docker events (label ``jobnode.node=<node id>``) tell when one of the node's containers
dies; it is then marked STARTING (not ready, so the scheduler holds its jobs), started
again unless Docker's restart policy already did, re-checked, and READY once it answers.
Deaths while the event stream was down are found by looking at the containers
(reconcile).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from app.config.settings import Settings
from app.containers.engine import docker_message, engine_address, engine_error, stop_events, subscribe_events
from app.containers.lifecycle import BringUpFailed, Lifecycle, Managed, Spawn, failure_reason
from app.containers.spec import LABEL_NODE
from app.containers.state import Readiness

log = logging.getLogger("jobnode.containers")


class DeathWatch:
    """Watches the engine's events for deaths of managed containers and recovers them."""

    def __init__(self, settings: Settings, managed: dict[str, Managed], lifecycle: Lifecycle, spawn: Spawn) -> None:
        self._settings = settings
        self._managed = managed
        self._lifecycle = lifecycle
        self._spawn = spawn
        #: The node is shutting down: a death is the node's own doing, not a crash.
        self.stopping = False

    async def watch(self, docker: aiodocker.Docker, *, reconcile: bool = False) -> str:
        """Follow the deaths of this node's containers until the engine is lost; why it was.

        ``reconcile``: look at the containers first (after a reconnect, deaths were missed)."""
        filters = {"type": ["container"], "event": ["die"], "label": [f"{LABEL_NODE}={self._settings.node_id}"]}
        delay = 1.0
        while True:
            subscriber = subscribe_events(docker, filters)
            if reconcile:
                # Deaths while the stream was down were not seen: look at the containers.
                try:
                    await self._reconcile(docker)
                except Exception:
                    log.debug("reconciling containers failed", exc_info=True)
            while True:
                event = await subscriber.get()
                if event is None:
                    break
                delay = 1.0
                try:
                    self._on_event(docker, event)
                except Exception:
                    log.exception("cannot handle docker event %r", event)
            del subscriber
            await stop_events(docker)
            try:
                await docker.version()
            except Exception as exc:
                return f"Docker Engine lost at {engine_address(self._settings.docker)}: {engine_error(exc)}"
            log.warning("docker events stream ended; reconnecting in %g s", delay)
            await asyncio.sleep(delay)
            delay, reconcile = min(delay * 2, 30.0), True

    def _on_event(self, docker: aiodocker.Docker, event: dict[str, Any]) -> None:
        if self.stopping or event.get("Type") != "container" or event.get("Action") != "die":
            return
        actor = event.get("Actor") or {}
        docker_id = actor.get("ID") or event.get("id")
        rec = next((r for r in self._managed.values() if r.state.docker_id == docker_id), None)
        if rec is None or rec.busy or not rec.up:
            return  # not ours, or a task that is watching it sees the exit itself
        code = (actor.get("Attributes") or {}).get("exitCode", "unknown")
        self._died(docker, rec, f"container died (exit code {code})")

    def _died(self, docker: aiodocker.Docker, rec: Managed, why: str) -> None:
        rec.up = False
        rec.state.restarts += 1
        rec.state.mark(Readiness.STARTING, f"{why}; restarting")
        log.warning("container %s: %s; bringing it back (restart %d)", rec.settings.id, why, rec.state.restarts)
        rec.task = self._spawn(self._recover(docker, rec, why), f"recover {rec.settings.id}")

    async def _reconcile(self, docker: aiodocker.Docker) -> None:
        for rec in self._managed.values():
            if not rec.up or rec.busy or rec.state.docker_id is None:
                continue
            try:
                info = await docker.containers.container(rec.state.docker_id).show()
            except DockerError as exc:
                if exc.status == 404:
                    self._died(docker, rec, "container was removed")
                continue
            state = info.get("State") or {}
            if not state.get("Running") or state.get("Restarting"):
                self._died(docker, rec, f"container died (exit code {state.get('ExitCode')})")

    async def _recover(self, docker: aiodocker.Docker, rec: Managed, why: str) -> None:
        assert rec.state.docker_id is not None
        handle = docker.containers.container(rec.state.docker_id)
        timeout = rec.settings.startup_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                try:
                    info = await handle.show()
                except DockerError as exc:
                    if exc.status == 404:  # removed behind our back: create it again
                        await self._lifecycle.bring_up(docker, rec)
                        return
                    raise
                state = info.get("State") or {}
                if state.get("Running") and not state.get("Restarting"):
                    break
                if not state.get("Running") and not state.get("Restarting"):
                    # Killed or stopped: Docker's restart policy leaves it down, so start it.
                    try:
                        await handle.start()
                    except DockerError as exc:
                        log.debug("container %s: start: %s", rec.settings.id, docker_message(exc))
                if loop.time() >= deadline:
                    raise BringUpFailed(f"it was not running again within {timeout:g} s")
                await asyncio.sleep(0.1)
            error = await self._lifecycle.wait_ready(rec, handle, max(deadline - loop.time(), 0.5))
        except Exception as exc:
            error = failure_reason(exc, rec.settings.id, "recovery")
        if error is None:
            rec.up = True
            rec.state.mark(Readiness.READY)
            log.info("container %s: back and ready after %s", rec.settings.id, why)
        else:
            error = f"{why} and did not come back: {error}"
            rec.state.mark(Readiness.FAILED, error)
            log.error("container %s: FAILED: %s", rec.settings.id, error)
