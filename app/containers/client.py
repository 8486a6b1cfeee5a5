"""The container protocol client (SPEC §3).

Job steps (``call``) go through the lean keep-alive client of ``app.containers.http11``
when the container's URL is plain ``http://``: a call costs a fraction of the CPU it
costs through aiohttp (why, and how it was measured: ``app.containers.http11``).
Streams, ``get_json`` and https URLs keep one pooled aiohttp session.

Every way a call can go wrong becomes a ``StepFailed`` whose text says what happened,
and whether the container may have received the request: only a failure *before*
the request reached it may be retried without running the work twice (``retries``), and
which failures a container's ``retry`` may try again later (``retry_reason``).
"""

from __future__ import annotations

import asyncio
import errno
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import msgspec

from app.clock import utcnow
from app.config.settings import ContainerSettings
from app.containers import http11
from app.containers.lazy_session import LazySession
from app.storable import DEFAULT_MAX_DEPTH, check_raw, nested_too_deep

BODY_EXCERPT = 200


#: Why a failed call may be tried again later (a container's ``retry``): it timed out, the
#: connection failed or was lost, or the container answered 5xx or 429. Anything else
#: (another 4xx, an output that is not JSON or cannot be stored) would fail again.
TIMEOUT, CONNECTION, SERVER_ERROR, TOO_MANY_REQUESTS = "timeout", "connection", "5xx", "429"


class StepFailed(Exception):
    def __init__(
        self,
        error: str,
        *,
        delivered: bool,
        retry_reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        #: False when the container cannot have seen the request (safe to re-send).
        self.delivered = delivered
        #: Why ``retry`` may try the step again; None: it may not.
        self.retry_reason = retry_reason
        #: Seconds the container asked to wait (``Retry-After`` of a 429 or 503).
        self.retry_after = retry_after


# The failures of a call, worded the same whichever client made it (``_post``, ``_post_lean``).


def _timed_out(container: ContainerSettings) -> StepFailed:
    return StepFailed(f"timed out after {container.timeout:g} s", delivered=True, retry_reason=TIMEOUT)


def _not_connected(os_error: OSError | None) -> StepFailed:
    refused = isinstance(os_error, ConnectionRefusedError)
    error = "connection refused" if refused else f"cannot connect: {os_error}"
    return StepFailed(error, delivered=False, retry_reason=CONNECTION)


def _closed_before_answer() -> StepFailed:
    return StepFailed("connection closed by the container before it answered", delivered=True, retry_reason=CONNECTION)


def _reset_by_peer() -> StepFailed:
    return StepFailed("connection reset by the container before it answered", delivered=True, retry_reason=CONNECTION)


#: errno values of a connection the peer reset or aborted (aiohttp's ``ClientOSError``).
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def _request_failed(exc: BaseException) -> StepFailed:
    return StepFailed(f"request failed: {type(exc).__name__}: {exc}", delivered=True, retry_reason=CONNECTION)


def _http_error(status: int, raw: bytes, retry_after: bytes | str | None) -> StepFailed:
    """A non-2xx answer: 5xx and 429 may be retried, honouring a ``Retry-After``."""
    reason = TOO_MANY_REQUESTS if status == 429 else SERVER_ERROR if 500 <= status < 600 else None
    wait = parse_retry_after(retry_after) if status in (429, 503) else None
    return StepFailed(f"HTTP {status}: {_excerpt(raw)}", delivered=True, retry_reason=reason, retry_after=wait)


def parse_retry_after(value: bytes | str | None) -> float | None:
    """Seconds from a ``Retry-After`` value (RFC 9110 §10.2.3): delta-seconds or an
    HTTP-date; None for none or one that is neither (ignored, not an error)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    seconds = (moment - utcnow()).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _excerpt(raw: bytes) -> str:
    """The start of a body, for an error text: stored in a text column, which on
    PostgreSQL cannot hold a NUL character either, so a NUL byte is shown as ``\\x00``."""
    text = raw[:BODY_EXCERPT].decode("utf-8", errors="replace").replace("\x00", "\\x00")
    return text + ("…" if len(raw) > BODY_EXCERPT else "")


class ContainerClient:
    def __init__(self, limit: int = 0, max_json_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self._limit = limit
        #: ``server.max_json_depth``: deeper outputs are refused (``_output``).
        self._max_depth = max_json_depth
        self._session = LazySession(self._open_session)
        self._lean = http11.Http11Pool()
        #: (base_url, bearer) -> where ``call`` posts; None: not plain http, aiohttp's.
        self._endpoints: dict[tuple[str, str | None], http11.Endpoint | None] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30, enable_cleanup_closed=True)
        return aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self._lean.close()
        await self._session.close()

    @staticmethod
    def _headers(container: ContainerSettings) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if container.bearer:
            headers["Authorization"] = f"Bearer {container.bearer}"
        return headers

    @staticmethod
    def _body(data: Any, requires_proof: bool) -> bytes:
        return msgspec.json.encode({"source": 1, "destination": 1, "data": data, "requires_proof": requires_proof})

    @asynccontextmanager
    async def _post(
        self, container: ContainerSettings, base_url: str, body: bytes
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        timeout = aiohttp.ClientTimeout(total=container.timeout)
        try:
            async with self._session.get().post(
                f"{base_url}/service_output", data=body, headers=self._headers(container), timeout=timeout
            ) as response:
                yield response
        except TimeoutError:
            raise _timed_out(container) from None
        except aiohttp.ClientConnectorError as exc:
            raise _not_connected(exc.os_error) from None
        except aiohttp.ServerDisconnectedError:
            raise _closed_before_answer() from None
        except aiohttp.ClientOSError as exc:
            raise (_reset_by_peer() if exc.errno in _RESET_ERRNOS else _request_failed(exc)) from None
        except aiohttp.ClientError as exc:
            raise _request_failed(exc) from None

    def _endpoint(self, container: ContainerSettings, base_url: str) -> http11.Endpoint | None:
        key = (base_url, container.bearer)
        try:
            return self._endpoints[key]
        except KeyError:
            found = self._endpoints[key] = http11.endpoint(f"{base_url}/service_output", self._headers(container))
            return found

    async def _post_lean(
        self, container: ContainerSettings, endpoint: http11.Endpoint, body: bytes
    ) -> tuple[int, bytes, bytes | None]:
        """``_post``'s failures, worded the same, from the lean client."""
        try:
            return await self._lean.post(endpoint, body, container.timeout)
        except TimeoutError:  # before OSError: it is one
            raise _timed_out(container) from None
        except http11.ConnectFailed as exc:
            raise _not_connected(exc.os_error) from None
        except http11.ClosedBeforeAnswer:
            raise _closed_before_answer() from None
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            raise _reset_by_peer() from None
        except (http11.HTTPFailure, OSError) as exc:
            raise _request_failed(exc) from None

    async def call(self, container: ContainerSettings, base_url: str, data: Any, requires_proof: bool) -> Any:
        """POST /service_output and return the container's JSON output."""
        body = self._body(data, requires_proof)
        endpoint = self._endpoint(container, base_url)
        retry_after: bytes | str | None
        for attempt in range(container.retries + 1):
            try:
                if endpoint is not None:
                    status, raw, retry_after = await self._post_lean(container, endpoint, body)
                else:
                    async with self._post(container, base_url, body) as response:
                        raw = await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                break
            except StepFailed as failed:
                if failed.delivered or attempt == container.retries:
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        if not 200 <= status < 300:
            raise _http_error(status, raw, retry_after)
        return self._output(raw)

    def _output(self, raw: bytes) -> Any:
        """The decoded output, or a ``StepFailed`` for one that is not JSON, or that could
        not be stored or read back (``app.storable``): such an output fails its own step,
        here, and never the group commit it would have joined (nor is the job run again)."""
        try:
            output = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise StepFailed(f"not valid JSON: {_excerpt(raw)}", delivered=True) from None
        except RecursionError:  # too deep even to decode
            raise StepFailed(f"output {nested_too_deep(self._max_depth)}", delivered=True) from None
        why = check_raw(raw, output, self._max_depth)
        if why is not None:
            raise StepFailed(f"output {why}", delivered=True)
        return output

    async def stream(
        self, container: ContainerSettings, base_url: str, data: Any, requires_proof: bool
    ) -> AsyncIterator[bytes]:
        """Yield the raw response body as it arrives (POST /api/jobs/stream)."""
        async with self._post(container, base_url, self._body(data, requires_proof)) as response:
            if not 200 <= response.status < 300:
                raw = await response.content.read(BODY_EXCERPT + 1)
                raise StepFailed(f"HTTP {response.status}: {_excerpt(raw)}", delivered=True)
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            except TimeoutError:
                raise _timed_out(container) from None
            except aiohttp.ClientError as exc:
                raise StepFailed(f"stream broken: {type(exc).__name__}", delivered=True) from None

    async def get_json(self, url: str, timeout: float = 5.0) -> Any:
        async with self._session.get().get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            response.raise_for_status()
            return msgspec.json.decode(await response.read())
