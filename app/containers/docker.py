"""The container runtime: runs the node's managed containers on the Docker Engine.

For each container the node manages (``Settings.managed``) a background task brings it
up: build or find the image, adopt the node's existing container when its create spec
and image are unchanged (else re-create it), start it, and check readiness — a TCP
connect to the port, or ``GET health_path`` — until ``startup_timeout``. Nothing here is
slept on a guess, and nothing blocks node start-up: ``start()`` only spawns tasks.

Docker events (label ``jobnode.node=<node id>``) tell the runtime when one of its
containers dies; it is then marked STARTING (not ready, so the scheduler holds its
jobs), started again unless Docker's restart policy already did, re-checked, and READY
once it answers.

Containers the node does not manage but that have a ``health_path`` are probed
periodically and marked READY/FAILED. Those without one are probed too, by a TCP connect
to the host and port of their ``url`` every ``probe_interval``: READY while it accepts,
FAILED (with the reason) while it does not. Their first probe is made as the node starts
(``first_probes``), so ``/info`` is right from the first request. A job for such a
container is not held back by the probe (``ContainerState.holds_jobs``).

An engine that is absent at start, or lost later, is tried again with backoff (1 s up to
30 s) for as long as the node runs; meanwhile the managed containers that do not answer
are FAILED with what went wrong, so that their jobs fail at once with that reason, and
once the engine answers the containers are brought up (or checked, after a loss).

Why a container is not ready is always written to ``state.last_error`` in plain words
and logged on ``jobnode.containers``; engine problems never raise out of ``start()``.

Unlike the Infernet node, an existing container is reused only when nothing about it
changed: the create spec and the image id are hashed into the ``jobnode.spec`` label.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shlex
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from app.config import ContainerSettings, Settings
from app.containers.images import ImageError, ensure_image, image_ref
from app.containers.readiness import Prober
from app.containers.state import ContainerState, ContainerStates, Readiness
from app.formatting import error_text

log = logging.getLogger("jobnode.containers")

LABEL_MANAGED = "jobnode.managed"
LABEL_NODE = "jobnode.node"
LABEL_CONTAINER = "jobnode.container"
LABEL_SPEC = "jobnode.spec"

#: The port a service listens on inside its container with bridge networking.
CONTAINER_PORT = 3000
#: Seconds ``docker stop`` waits before it kills.
STOP_TIMEOUT = 10
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000
#: Where aiodocker looks first when neither ``docker.url`` nor DOCKER_HOST says.
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"


class _Failed(Exception):
    """A container cannot be brought up; the message is the reason for ``last_error``."""


def container_name(container: ContainerSettings) -> str:
    """Stable name so that a restarted node finds its own container again."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]+", "_", container.id).lstrip("_.-") or "container"
    return f"jobnode-{safe}-{container.port}"


def env_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bind(volume: str) -> str:
    """``host:container[:mode]``; a relative host path is resolved against the cwd."""
    host, sep, rest = volume.partition(":")
    if sep and not host.startswith("/") and (host.startswith((".", "~")) or "/" in host):
        host = str(Path(host).expanduser().resolve())
    return f"{host}{sep}{rest}"


def create_spec(settings: Settings, container: ContainerSettings) -> dict[str, Any]:
    """The body of ``POST /containers/create`` (without the ``jobnode.spec`` label)."""
    env: dict[str, str] = {}
    host_config: dict[str, Any] = {"RestartPolicy": {"Name": "unless-stopped"}}
    spec: dict[str, Any] = {"Image": image_ref(container)}
    if settings.docker.network_mode == "host":
        env["HOST"] = "127.0.0.1"
        env.update({key: env_value(value) for key, value in container.env.items()})
        env["PORT"] = str(container.port)  # the node calls this port: the config's value wins
        host_config["NetworkMode"] = "host"
    else:
        env.update({key: env_value(value) for key, value in container.env.items()})
        host_config["NetworkMode"] = "bridge"
        spec["ExposedPorts"] = {f"{CONTAINER_PORT}/tcp": {}}
        host_config["PortBindings"] = {
            f"{CONTAINER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(container.port)}]
        }
    spec["Env"] = [f"{key}={value}" for key, value in env.items()]
    if container.command is not None:
        spec["Cmd"] = shlex.split(container.command) if isinstance(container.command, str) else list(container.command)
    if container.volumes:
        host_config["Binds"] = [_bind(volume) for volume in container.volumes]
    if container.gpu:
        host_config["DeviceRequests"] = [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
    spec["Labels"] = {
        **settings.docker.labels,
        LABEL_MANAGED: "1",
        LABEL_NODE: settings.node_id,
        LABEL_CONTAINER: container.id,
    }
    spec["HostConfig"] = host_config
    return spec


def spec_hash(spec: dict[str, Any], image_id: str) -> str:
    payload = json.dumps({"spec": spec, "image": image_id}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _docker_message(exc: DockerError) -> str:
    return str(exc.message).strip() or repr(exc)


def engine_error(exc: BaseException) -> str:
    """What went wrong talking to the engine, never empty (``FileNotFoundError: [Errno 2]
    No such file or directory`` rather than aiohttp's "Cannot connect to host localhost:80")."""
    if isinstance(exc, DockerError) and exc.status == 900 and exc.__context__ is not None:
        exc = exc.__context__  # aiodocker's "Cannot connect to Docker Engine via …" wrapping
    if isinstance(exc, DockerError):
        return _docker_message(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return error_text(exc.os_error)
    return error_text(exc)


@dataclass(eq=False)
class _Managed:
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


class ContainerRuntime:
    """Brings up and supervises the node's containers; see the module docstring."""

    #: Seconds between probes of a running unmanaged container (and after a failed one).
    probe_interval: float = 5.0
    #: Backoff between attempts to reach an absent or lost Docker Engine: 1, 2, 4 … 30 s.
    engine_retry_initial: float = 1.0
    engine_retry_max: float = 30.0

    def __init__(self, settings: Settings, states: ContainerStates, *, probe_interval: float | None = None) -> None:
        self._settings = settings
        self._states = states
        if probe_interval is not None:
            self.probe_interval = probe_interval
        self._docker: aiodocker.Docker | None = None
        self._prober = Prober(settings)
        self._managed: dict[str, _Managed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._image_locks: dict[str, asyncio.Lock] = {}
        self._image_ids: dict[tuple[str, str | None], str] = {}
        self._stopping = False
        self._started = False
        self._published = settings.docker.network_mode == "bridge"
        self._first_probes: list[asyncio.Task[Any]] = []

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for state in self._states:
            if state.managed:
                self._managed[state.settings.id] = _Managed(state.settings, state, container_name(state.settings))
                state.mark(Readiness.STARTING)
            elif state.settings.health_path:
                self._spawn(self._probe_loop(state), f"probe {state.settings.id}")
            else:
                first = self._spawn(self._probe_port(state), f"first probe {state.settings.id}")
                self._first_probes.append(first)
                self._spawn(self._port_loop(state, first), f"probe {state.settings.id}")
        if self._managed:
            self._spawn(self._supervise(), "docker supervisor")

    async def first_probes(self) -> None:
        """Wait for the first probe of each unmanaged container without a ``health_path``
        (a connect: at most ``PROBE_TIMEOUT`` each, all at once)."""
        await asyncio.gather(*self._first_probes, return_exceptions=True)

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        docker, self._docker = self._docker, None
        if docker is not None:
            await self._stop_events(docker)
            if self._settings.docker.stop_containers_on_shutdown:
                await asyncio.gather(
                    *(self._stop_container(docker, rec) for rec in self._managed.values() if rec.state.docker_id)
                )
            await self._close(docker)
        await self._prober.close()

    async def _stop_container(self, docker: aiodocker.Docker, rec: _Managed) -> None:
        assert rec.state.docker_id is not None
        rec.up = False
        try:
            await docker.containers.container(rec.state.docker_id).stop(t=STOP_TIMEOUT)
        except DockerError as exc:
            if exc.status != 404:
                log.warning("container %s: cannot stop %s: %s", rec.settings.id, rec.name, _docker_message(exc))
                return
        rec.state.mark(Readiness.STOPPED, "stopped by the node at shutdown")
        log.info("container %s: stopped %s", rec.settings.id, rec.name)

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"jobnode.containers: {what}")
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s crashed", what, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    # -- engine -------------------------------------------------------------------------
    def _where(self) -> str:
        """The engine's address as the operator would look for it."""
        return self._settings.docker.url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL

    def _open_client(self) -> aiodocker.Docker:
        """aiodocker's client; with no ``docker.url`` and no socket there yet, the default
        socket, so that an engine that starts later is found (aiodocker itself fails then
        with an empty ``AssertionError``)."""
        # Connect fast or fail; long operations (build, pull, logs, events) lift the total.
        timeout = aiohttp.ClientTimeout(total=120, connect=10)
        try:
            return aiodocker.Docker(url=self._settings.docker.url, timeout=timeout)
        except (AssertionError, ValueError):
            if self._settings.docker.url is not None:
                raise
            return aiodocker.Docker(url=DEFAULT_DOCKER_URL, timeout=timeout)

    async def _connect(self) -> tuple[aiodocker.Docker, dict[str, Any]]:
        """A client whose engine answers, retried with backoff for as long as it takes.

        Meanwhile every managed container that is not up is FAILED with what went wrong,
        so that its jobs fail at once with that reason instead of waiting for it."""
        delay, logged = self.engine_retry_initial, None
        while True:
            docker: aiodocker.Docker | None = None
            try:
                docker = self._open_client()
                return docker, await docker.version()
            except Exception as exc:
                reason = f"Docker Engine unreachable at {self._where()}: {engine_error(exc)}"
            if docker is not None:
                await self._close(docker)
            for rec in self._managed.values():
                if not rec.up:
                    rec.state.mark(Readiness.FAILED, f"{reason}; retrying (backoff up to {self.engine_retry_max:g} s)")
            if reason != logged:
                log.error("%s; managed containers are FAILED until it answers; retrying with backoff", reason)
                logged = reason
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.engine_retry_max)

    async def _close(self, docker: aiodocker.Docker) -> None:
        await self._stop_events(docker)
        try:
            await docker.close()
        except Exception:
            log.debug("closing the Docker client failed", exc_info=True)

    async def _supervise(self) -> None:
        """Connect, bring the containers up, follow them; when the engine is lost, connect
        again and bring back what did not survive."""
        first = True
        while True:
            docker, version = await self._connect()
            self._docker = docker
            log.info(
                "Docker Engine %s (API %s) at %s; bringing up %d container(s)",
                version.get("Version"),
                docker.api_version,
                self._where(),
                len(self._managed),
            )
            for rec in self._managed.values():
                if not rec.up:
                    rec.state.mark(Readiness.STARTING)
                    rec.task = self._spawn(self._bring_up(docker, rec), f"bring up {rec.settings.id}")
            reason = await self._watch_events(docker, reconcile=not first)
            first = False
            self._docker = None
            await self._engine_lost(reason)
            await self._close(docker)

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
            if rec.up and await self._prober.probe(rec.settings, published=self._published) is None:
                continue
            rec.up = False
            rec.state.mark(Readiness.FAILED, f"{reason}; reconnecting")

    # -- bring-up -----------------------------------------------------------------------
    async def _bring_up(self, docker: aiodocker.Docker, rec: _Managed) -> None:
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
            error = await self._wait_ready(rec, handle, container.startup_timeout)
        except (ImageError, _Failed) as exc:
            error = str(exc)
        except DockerError as exc:
            error = f"Docker Engine error: {_docker_message(exc)}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"Docker Engine error: {engine_error(exc)}"
        except Exception as exc:
            log.exception("container %s: bring-up failed", container.id)
            error = f"unexpected error: {type(exc).__name__}: {exc}"
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
        self, docker: aiodocker.Docker, rec: _Managed, spec: dict[str, Any], digest: str
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
                    raise _Failed(
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
                raise _Failed(f"cannot create container {rec.name}: {_docker_message(exc)}") from None
            log.info("container %s: created %s from %s", cid, rec.name, spec["Image"])
            await self._start(created, rec)
            return created
        raise _Failed(f"cannot create container {rec.name}: the name stays taken")

    async def _start(self, handle: DockerContainer, rec: _Managed) -> None:
        try:
            await handle.start()
        except DockerError as exc:
            raise _Failed(f"cannot start container {rec.name}: {_docker_message(exc)}") from None

    async def _logs_tail(self, handle: DockerContainer) -> str:
        try:
            lines = await handle.log(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        except DockerError:
            return ""
        text = "".join(lines).strip()
        if len(text) > LOG_TAIL_CHARS:
            text = "…" + text[-LOG_TAIL_CHARS:]
        return f"; last log lines:\n{text}" if text else "; it logged nothing"

    async def _wait_ready(self, rec: _Managed, handle: DockerContainer, timeout: float) -> str | None:
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
            log.debug("cannot stop %s: %s", handle.id[:12], _docker_message(exc))

    # -- events and recovery ----------------------------------------------------------
    async def _stop_events(self, docker: aiodocker.Docker) -> None:
        """Stop aiodocker's events task, reading its exception so that none is lost."""
        task = docker.events.task
        if task is not None and task.done():
            if not task.cancelled() and task.exception() is not None:
                log.debug("docker events stream ended: %s", task.exception())
            docker.events.task = None
        try:
            await docker.events.stop()
        except Exception:
            log.debug("stopping the docker events stream failed", exc_info=True)
            docker.events.task = None

    async def _watch_events(self, docker: aiodocker.Docker, *, reconcile: bool = False) -> str:
        """Follow the deaths of this node's containers until the engine is lost; why it was.

        ``reconcile``: look at the containers first (after a reconnect, deaths were missed)."""
        filters = {"type": ["container"], "event": ["die"], "label": [f"{LABEL_NODE}={self._settings.node_id}"]}
        delay = 1.0
        while True:
            subscriber = docker.events.subscribe(filters=filters)
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
            await self._stop_events(docker)
            try:
                await docker.version()
            except Exception as exc:
                return f"Docker Engine lost at {self._where()}: {engine_error(exc)}"
            log.warning("docker events stream ended; reconnecting in %g s", delay)
            await asyncio.sleep(delay)
            delay, reconcile = min(delay * 2, 30.0), True

    def _on_event(self, docker: aiodocker.Docker, event: dict[str, Any]) -> None:
        if self._stopping or event.get("Type") != "container" or event.get("Action") != "die":
            return
        actor = event.get("Actor") or {}
        docker_id = actor.get("ID") or event.get("id")
        rec = next((r for r in self._managed.values() if r.state.docker_id == docker_id), None)
        if rec is None or rec.busy or not rec.up:
            return  # not ours, or a task that is watching it sees the exit itself
        code = (actor.get("Attributes") or {}).get("exitCode", "unknown")
        self._died(docker, rec, f"container died (exit code {code})")

    def _died(self, docker: aiodocker.Docker, rec: _Managed, why: str) -> None:
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

    async def _recover(self, docker: aiodocker.Docker, rec: _Managed, why: str) -> None:
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
                        await self._bring_up(docker, rec)
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
                        log.debug("container %s: start: %s", rec.settings.id, _docker_message(exc))
                if loop.time() >= deadline:
                    raise _Failed(f"it was not running again within {timeout:g} s")
                await asyncio.sleep(0.1)
            error = await self._wait_ready(rec, handle, max(deadline - loop.time(), 0.5))
        except _Failed as exc:
            error = str(exc)
        except DockerError as exc:
            error = f"Docker Engine error: {_docker_message(exc)}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"Docker Engine error: {engine_error(exc)}"
        except Exception as exc:
            log.exception("container %s: recovery failed", rec.settings.id)
            error = f"unexpected error: {type(exc).__name__}: {exc}"
        if error is None:
            rec.up = True
            rec.state.mark(Readiness.READY)
            log.info("container %s: back and ready after %s", rec.settings.id, why)
        else:
            error = f"{why} and did not come back: {error}"
            rec.state.mark(Readiness.FAILED, error)
            log.error("container %s: FAILED: %s", rec.settings.id, error)

    # -- containers run elsewhere ---------------------------------------------------------
    async def _probe_loop(self, state: ContainerState) -> None:
        container = state.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + container.startup_timeout
        interval = 0.1
        state.mark(Readiness.STARTING)
        while True:
            reason = await self._prober.probe(container)
            if reason is None:
                if not state.ready:
                    log.info("container %s: ready (%s answers)", container.id, self._prober.target(container))
                    state.mark(Readiness.READY)
                await asyncio.sleep(self.probe_interval)
            elif state.readiness is Readiness.STARTING and loop.time() < deadline:
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, 1.0)
            else:
                error = f"{self._prober.target(container)}: {reason}"
                if state.readiness is not Readiness.FAILED or state.last_error != error:
                    log.warning("container %s: not ready: %s", container.id, error)
                state.mark(Readiness.FAILED, error)
                await asyncio.sleep(self.probe_interval)

    async def _port_loop(self, state: ContainerState, first: asyncio.Task[None]) -> None:
        await asyncio.gather(first, return_exceptions=True)
        while True:
            await asyncio.sleep(self.probe_interval)
            await self._probe_port(state)

    async def _probe_port(self, state: ContainerState) -> None:
        """One TCP probe of a container run elsewhere without a ``health_path``; a change
        is logged once, not at every probe."""
        container = state.settings
        reason = await self._prober.probe(container)
        if reason is None:
            if not state.ready:
                log.info("container %s: ready (%s accepts connections)", container.id, self._prober.target(container))
                state.mark(Readiness.READY)
            return
        error = f"{self._prober.target(container)}: {reason}"
        if state.readiness is not Readiness.FAILED or state.last_error != error:
            log.warning("container %s: not ready: %s", container.id, error)
        state.mark(Readiness.FAILED, error)
