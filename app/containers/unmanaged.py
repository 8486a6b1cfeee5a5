"""Probing the containers the node does not manage (run elsewhere), for as long as it runs.

Those with a ``health_path`` are probed periodically and marked READY/FAILED. Those
without one are probed too, by a TCP connect to the host and port of their ``url`` every
``probe_interval``: READY while it accepts, FAILED (with the reason) while it does not.
Their first probe is made as the node starts, so ``/info`` is right from the first
request. A job for such a container is not held back by the probe
(``ContainerState.holds_jobs``). A change is logged once, not at every probe.
"""

from __future__ import annotations

import asyncio
import logging

from app.containers.readiness import Prober
from app.containers.state import ContainerState, Readiness

log = logging.getLogger("jobnode.containers")


class UnmanagedProbes:
    """The probe loops of unmanaged containers."""

    def __init__(self, prober: Prober, interval: float) -> None:
        self._prober = prober
        #: Seconds between probes of a running container (and after a failed one).
        self.interval = interval

    async def health_loop(self, state: ContainerState) -> None:
        """A container with a ``health_path``: STARTING until it answers or its
        ``startup_timeout`` passes, then READY/FAILED as its probes say."""
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
                await asyncio.sleep(self.interval)
            elif state.readiness is Readiness.STARTING and loop.time() < deadline:
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, 1.0)
            else:
                self._not_ready(state, reason)
                await asyncio.sleep(self.interval)

    async def port_loop(self, state: ContainerState, first: asyncio.Task[None]) -> None:
        """A container without a ``health_path``, after its ``first`` probe."""
        await asyncio.gather(first, return_exceptions=True)
        while True:
            await asyncio.sleep(self.interval)
            await self.probe_port(state)

    async def probe_port(self, state: ContainerState) -> None:
        """One TCP probe of a container without a ``health_path``."""
        container = state.settings
        reason = await self._prober.probe(container)
        if reason is None:
            if not state.ready:
                log.info("container %s: ready (%s accepts connections)", container.id, self._prober.target(container))
                state.mark(Readiness.READY)
            return
        self._not_ready(state, reason)

    def _not_ready(self, state: ContainerState, reason: str) -> None:
        error = f"{self._prober.target(state.settings)}: {reason}"
        if state.readiness is not Readiness.FAILED or state.last_error != error:
            log.warning("container %s: not ready: %s", state.settings.id, error)
        state.mark(Readiness.FAILED, error)
