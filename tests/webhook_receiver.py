"""A real webhook receiver for the tests: an aiohttp server in the test process (the
nodes under test, in-process or as processes, POST to it over TCP) that records every
request with its headers, body and arrival time.

``POST /<name>`` answers by ``answers[name]`` (a list consumed one per request, the last
one repeated; default 200): a status code, or ``("redirect", url)`` (302 with that
Location), or ``("slow", seconds)`` (waits, then 200). ``stop()`` and ``start()`` take
the receiver down and up again on the same port (connections refused meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import free_port

Answer = int | tuple[str, Any]


@dataclass
class Received:
    name: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery(self) -> str:
        return self.headers["Jobnode-Delivery"]


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[Received] = []
        self.answers: dict[str, list[Answer]] = {}
        self._runner: web.AppRunner | None = None

    def hook(self, name: str = "hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{name}"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *_: Any) -> None:
        await self.stop()

    def of(self, name: str) -> list[Received]:
        return [r for r in self.received if r.name == name]

    async def wait_for(self, count: int, name: str | None = None, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.received if name is None else self.of(name)
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, f"{len(got)} of {count} webhook requests arrived"
            await asyncio.sleep(0.02)

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.received.append(Received(name, dict(request.headers), await request.read()))
        queue = self.answers.get(name) or [200]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, tuple):
            kind, value = answer
            if kind == "redirect":
                return web.Response(status=302, headers={"Location": value})
            await asyncio.sleep(value)
            return web.Response(status=200)
        return web.Response(status=answer, text="ok")
