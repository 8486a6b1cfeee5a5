"""An aiohttp session opened on first use: the container client, the webhook client and
the readiness prober each keep one for what the lean HTTP/1.1 client does not do (https,
streams, health probes), and most nodes never need it, so none is opened at start."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp


class LazySession:
    def __init__(self, open_session: Callable[[], aiohttp.ClientSession]) -> None:
        self._open = open_session
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        """The session, opened again if it was closed (a node's runtime can be restarted)."""
        if self._session is None or self._session.closed:
            self._session = self._open()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
