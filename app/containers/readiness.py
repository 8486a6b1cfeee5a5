"""Readiness checks: is a container answering? Checked, never slept.

A container with a ``health_path`` is ready when ``GET base_url + health_path`` answers
2xx; one without is ready when its port accepts a TCP connection. Each probe returns
``None`` when ready, else a short reason ("connection refused", "HTTP 503", ...).
"""

from __future__ import annotations

import asyncio
import errno
from urllib.parse import urlsplit

import aiohttp

from app.config.settings import ContainerSettings, Settings
from app.containers.lazy_session import LazySession

PROBE_TIMEOUT = 2.0


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__


async def probe_tcp(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return _os_reason(exc)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def probe_http(
    session: aiohttp.ClientSession, url: str, timeout: float = PROBE_TIMEOUT, headers: dict[str, str] | None = None
) -> str | None:
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as response:
            await response.read()
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except aiohttp.ClientConnectorError as exc:
        return _os_reason(exc.os_error)
    except aiohttp.ClientError as exc:
        return str(exc) or type(exc).__name__


async def probe_http_any(session: aiohttp.ClientSession, url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Ready when anything answers HTTP at all, whatever the status."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as response:
            await response.read()
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except aiohttp.ClientConnectorError as exc:
        return _os_reason(exc.os_error)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):  # closed or reset after accept
        return "connection closed without an HTTP answer"
    except aiohttp.ClientError as exc:
        return str(exc) or type(exc).__name__


class Prober:
    """Probes containers for one runtime; owns the HTTP session used for health paths."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # No pooled keep-alive: a probe must see a restarted server, not a stale socket.
        self._session = LazySession(lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)))

    def target(self, container: ContainerSettings) -> str:
        """What is probed, for messages: ``GET http://…/health`` or ``127.0.0.1:3000``."""
        if container.health_path:
            return f"GET {self._url(container)}"
        host, port = self._address(container)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _address(self, container: ContainerSettings) -> tuple[str, int]:
        """Host and port of the container's base URL: its ``url`` when it runs elsewhere,
        else ``server.container_host`` and its port."""
        if container.url is None:
            assert container.port is not None
            return self._settings.server.container_host, container.port
        parts = urlsplit(container.url)
        try:
            port = parts.port
        except ValueError:  # not a port number: nothing can listen there
            port = None
        return parts.hostname or "127.0.0.1", port or (443 if parts.scheme == "https" else 80)

    def _url(self, container: ContainerSettings) -> str:
        path = container.health_path or "/"
        return self._settings.base_url(container) + (path if path.startswith("/") else "/" + path)

    async def probe(self, container: ContainerSettings, *, published: bool = False) -> str | None:
        """``published``: the port is published by Docker (bridge networking). Docker's
        userland proxy accepts connections on it before anything listens in the container,
        so a TCP connect proves nothing there; any HTTP answer (even a 404) is asked for."""
        if container.health_path:
            headers = {"Authorization": f"Bearer {container.bearer}"} if container.bearer else None
            return await probe_http(self._session.get(), self._url(container), headers=headers)
        if published:
            return await probe_http_any(self._session.get(), self._settings.base_url(container) + "/")
        return await probe_tcp(*self._address(container))

    async def close(self) -> None:
        await self._session.close()
