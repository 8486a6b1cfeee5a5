"""One POST of a webhook: the allow-list checked on the URL's host and on the very
address connected to, the body signed, redirects never followed.

The host is resolved once per connection by ``CheckedResolver``, which keeps only the
addresses the allow-list accepts for it (``app.jobs.webhook_policy``) and hands aiohttp
exactly one of them: the address checked is the address connected to, so a name that
resolves elsewhere between a check and the connection (DNS rebinding) cannot slip past.
A host written as an IP address never reaches a resolver; it is checked before the POST.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from app.clock import utcnow
from app.config.settings import WebhookSettings
from app.jobs.webhook_policy import AllowList, WebhookInvalid

EVENT = "job.finished"


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
            shown = ", ".join(sorted({info["host"] for info in found}))
            raise AddressRefused(f"{host} resolves to {shown}, which webhooks.allowed_hosts does not allow")
        return allowed[:1]

    async def close(self) -> None:
        await self._resolver.close()


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
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=CheckedResolver(self.allow), use_dns_cache=False, limit=self.settings.concurrency
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "jobnode-webhooks"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self, delivery_id: str, attempt: int, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Jobnode-Event": EVENT,
            "Jobnode-Delivery": delivery_id,
            "Jobnode-Attempt": str(attempt),
        }
        if self.settings.secret:
            headers["Jobnode-Signature"] = signature(self.settings.secret, int(utcnow().timestamp()), body)
        return headers

    async def post(self, url: str, delivery_id: str, attempt: int, body: bytes) -> Answer:
        """One attempt; never raises for what the endpoint or the network does."""
        try:
            if not self.allow.allows_url(url):
                return Answer(None, "refused: webhooks.allowed_hosts does not allow this host", refused=True)
        except WebhookInvalid as exc:
            return Answer(None, f"refused: the URL {exc}", refused=True)
        try:
            async with self._open().post(
                url, data=body, headers=self.headers(delivery_id, attempt, body), allow_redirects=False
            ) as response:
                await response.read()
                return Answer(response.status, None if 200 <= response.status < 300 else f"HTTP {response.status}")
        except AddressRefused as exc:
            return Answer(None, f"refused: {exc}", refused=True)
        except TimeoutError:
            return Answer(None, f"timed out after {self.settings.timeout:g} s")
        except aiohttp.ClientConnectorError as exc:
            refused = _refusal(exc)
            if refused is not None:
                return Answer(None, f"refused: {refused}", refused=True)
            return Answer(None, f"cannot connect: {exc.os_error.strerror or exc.os_error}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}"[:500])


def _refusal(exc: BaseException) -> Any:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
