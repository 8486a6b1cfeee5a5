"""One POST of a webhook: the allow-list checked on the URL's host and on the very
address connected to, the body signed, redirects never followed.

``http://`` URLs go through the node's lean keep-alive client (``app.containers.http11``,
the one job steps use): aiohttp's client cost about three times its CPU per POST, which at
saturation was a good part of a job's cost. Its ``resolve`` hook is ``resolve_checked``:
the host is resolved once per new connection and only an address the allow-list accepts
for it (``app.jobs.webhook_policy``) is connected to, the URL's host going in ``Host``.
https URLs (and the few http URLs that client leaves aside) keep aiohttp, where
``CheckedResolver`` does the same. Either way the address checked is the address
connected to, so a name that resolves elsewhere between a check and the connection
(DNS rebinding) cannot slip past; a kept connection is reused without resolving again (the
allow-list does not change while the node runs). A host written as an IP address never
reaches a resolver; it is checked before the POST. Neither client follows a redirect: the
3xx is the attempt's answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from app.clock import utcnow
from app.config.settings import WebhookSettings
from app.containers import http11
from app.containers.lazy_session import LazySession
from app.jobs.webhook_policy import AllowList, WebhookInvalid

EVENT = "job.finished"
USER_AGENT = "jobnode-webhooks"
#: URLs whose check and rendered endpoint are kept, at most (they are cheap to redo).
MAX_ROUTES = 4096


class AddressRefused(Exception):
    """The host resolved to no address the allow-list accepts for it."""


class CheckedResolver(AbstractResolver):
    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        allowed = [info for info in found if self.allow.allows_address(host.lower().rstrip("."), info["host"])]
        if not allowed:
            raise _refused(host, [info["host"] for info in found])
        return allowed[:1]

    async def close(self) -> None:
        await self._resolver.close()


def _refused(host: str, found: list[str]) -> AddressRefused:
    shown = ", ".join(sorted(set(found)))
    return AddressRefused(f"{host} resolves to {shown}, which webhooks.allowed_hosts does not allow")


def resolve_checked(allow: AllowList) -> http11.Resolve:
    """The lean client's resolver: the first address of the host the allow-list accepts."""

    async def resolve(host: str, port: int) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        name = host.lower().rstrip(".")
        allowed = [address for address in found if allow.allows_address(name, address)]
        if not allowed:
            raise _refused(host, found)
        return allowed[:1]

    return resolve


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``Jobnode-Signature``: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST came to: a status code, or an error (``refused``: never sent)."""

    status_code: int | None
    error: str | None
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookClient:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.allow = AllowList.parse(settings.allowed_hosts)
        self._session = LazySession(self._open_session)
        self._lean = http11.Http11Pool()
        self._resolve = resolve_checked(self.allow)
        self._routes: dict[str, tuple[Answer | None, http11.Endpoint | None]] = {}
        self._fixed = {"Content-Type": "application/json", "Jobnode-Event": EVENT}

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self.allow), use_dns_cache=False, limit=self.settings.concurrency
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self._lean.close()
        await self._session.close()

    def headers(self, delivery_id: str, attempt: int, body: bytes) -> dict[str, str]:
        """The headers of one attempt (``Content-Type`` and ``Jobnode-Event`` included)."""
        return self._fixed | self._own_headers(delivery_id, attempt, body)

    def _own_headers(self, delivery_id: str, attempt: int, body: bytes) -> dict[str, str]:
        headers = {"Jobnode-Delivery": delivery_id, "Jobnode-Attempt": str(attempt)}
        if self.settings.secret:
            headers["Jobnode-Signature"] = signature(self.settings.secret, int(utcnow().timestamp()), body)
        return headers

    def _route(self, url: str) -> tuple[Answer | None, http11.Endpoint | None]:
        """The URL's refusal (None: the allow-list allows its host) and, for the lean
        client, its endpoint (None: aiohttp's). Both depend only on the URL and the
        allow-list, which does not change while the node runs: each URL's are kept."""
        try:
            return self._routes[url]
        except KeyError:
            pass
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        try:
            allowed = self.allow.allows_url(url)
        except WebhookInvalid as exc:
            route: tuple[Answer | None, http11.Endpoint | None] = (Answer(None, f"refused: the URL {exc}", True), None)
        else:
            refusal = (
                None if allowed else Answer(None, "refused: webhooks.allowed_hosts does not allow this host", True)
            )
            try:
                endpoint = http11.endpoint(url, {"User-Agent": USER_AGENT} | self._fixed)
            except ValueError:  # a head it refuses to render: aiohttp's then, which refuses it too
                endpoint = None
            route = (refusal, endpoint)
        self._routes[url] = route
        return route

    async def post(self, url: str, delivery_id: str, attempt: int, body: bytes) -> Answer:
        """One attempt; never raises for what the endpoint or the network does."""
        refusal, endpoint = self._route(url)
        if refusal is not None:
            return refusal
        try:
            if endpoint is not None:
                return await self._post_lean(endpoint, delivery_id, attempt, body)
            async with self._session.get().post(
                url, data=body, headers=self.headers(delivery_id, attempt, body), allow_redirects=False
            ) as response:
                await response.read()
                return _answer(response.status)
        except AddressRefused as exc:
            return Answer(None, f"refused: {exc}", refused=True)
        except TimeoutError:
            return Answer(None, f"timed out after {self.settings.timeout:g} s")
        except http11.ConnectFailed as exc:  # asyncio's strerror names the address: the errno's is aiohttp's
            error = exc.os_error
            return Answer(None, f"cannot connect: {os.strerror(error.errno) if error.errno else error}")
        except aiohttp.ClientConnectorError as exc:
            refused = _refusal(exc)
            if refused is not None:
                return Answer(None, f"refused: {refused}", refused=True)
            return Answer(None, f"cannot connect: {exc.os_error.strerror or exc.os_error}")
        except (aiohttp.ClientError, http11.HTTPFailure, OSError, ValueError) as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}"[:500])

    async def _post_lean(self, endpoint: http11.Endpoint, delivery_id: str, attempt: int, body: bytes) -> Answer:
        # The values are a UUID, a number and hex digits: no CR or LF can reach the head.
        extra = "".join(f"{name}: {value}\r\n" for name, value in self._own_headers(delivery_id, attempt, body).items())
        status, _, _ = await self._lean.post(
            endpoint, body, self.settings.timeout, extra.encode("latin-1"), self._resolve
        )
        return _answer(status)


def _answer(status: int) -> Answer:
    return Answer(status, None if 200 <= status < 300 else f"HTTP {status}")


def _refusal(exc: BaseException) -> Any:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
