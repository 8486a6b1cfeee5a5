"""A browser is no way in (SPEC §10): ``Origin`` and ``Host`` checks, one ASGI middleware.

Without an operator token, the operator endpoints answer loopback clients, and every
client is known by its address: a web page open in a browser on the node's machine
would be both. So:

- A request whose ``Origin`` is not the node's own gets 403 ``{"error": "Cross-origin
  request refused"}`` on every state-changing request (any method but GET, HEAD and
  OPTIONS, on any endpoint: a ``text/plain`` POST needs no CORS preflight) and on the
  operator endpoints for any method. ``Origin: null`` is foreign. Requests without an
  ``Origin`` (curl, the Infernet client, the dashboard's own same-origin reads) are
  not affected.
- A request to an operator endpoint (whatever ``operator_guard`` protects: one job in
  full, cancel, retry, containers, ``/metrics``, the dashboard) whose ``Host`` is not the
  node's own gets 421 ``{"error": "Misdirected request"}``: DNS rebinding points a name
  of the attacker's at 127.0.0.1, and the browser then sends that name as ``Host`` and
  treats the node as the attacker's own site.

The node's own hosts are ``server.host`` (unless it is an unspecified address such as
``0.0.0.0``, which names no host), ``localhost``, every loopback address, and
``server.allowed_hosts``. An origin is the node's own when it is ``http``/``https`` on
one of those hosts, on any port (a reverse proxy's port is not ``server.port``; the
port is no defence anyway: any process on the machine can reach the node directly), or
when it is listed in ``server.allowed_origins``. "Own" is never taken from the
request's own ``Host``: under DNS rebinding ``Origin`` and ``Host`` agree on the
attacker's name.

Cost: a dictionary lookup per request; a scan of the headers when the request changes
state or reaches an operator endpoint; the verdicts are cached per header value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.config.settings import ServerSettings
from app.config.values import ConfigError, parse_host, parse_origin
from app.errors import CROSS_ORIGIN, MISDIRECTED
from app.http.operator_auth import is_loopback, operator_guard

#: Methods that change nothing (OPTIONS is Litestar's automatic ``Allow`` answer).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Distinct header values whose verdict is kept; past it the cache starts over.
_CACHE_SIZE = 1024


def _host_of_header(value: str) -> str:
    """The host part of a ``Host`` header: ``name``, ``name:port``, ``[v6]:port``."""
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.partition(":")[0]


def _host_of_origin(origin: str) -> str:
    """The host of a normalised origin (``parse_origin``), without brackets or port."""
    authority = origin.partition("://")[2]
    if authority.startswith("["):
        return authority[1 : authority.index("]")]
    return authority.partition(":")[0]


class OriginPolicy:
    """Which ``Host`` and ``Origin`` values are the node's own (see the module docstring)."""

    def __init__(self, server: ServerSettings) -> None:
        hosts = {"localhost", *server.allowed_hosts}
        try:
            own = parse_host(server.host, "server.host")
        except ConfigError:  # not a name a Host header could carry: nothing to add
            own = ""
        if own and not self._unspecified(own):
            hosts.add(own)
        self.hosts = frozenset(hosts)
        self.origins = frozenset(server.allowed_origins)
        self._host_verdicts: dict[bytes, bool] = {}
        self._origin_verdicts: dict[bytes, bool] = {}

    @staticmethod
    def _unspecified(host: str) -> bool:
        try:
            return ipaddress.ip_address(host).is_unspecified
        except ValueError:
            return False

    def own_host(self, host: str) -> bool:
        """``host`` (normalised by ``parse_host``) is one of the node's own."""
        return host in self.hosts or is_loopback(host)

    def host_allowed(self, raw: bytes) -> bool:
        verdict = self._host_verdicts.get(raw)
        if verdict is None:
            try:
                verdict = self.own_host(parse_host(_host_of_header(raw.decode("latin-1")), "Host"))
            except ConfigError:
                verdict = False
            _remember(self._host_verdicts, raw, verdict)
        return verdict

    def origin_allowed(self, raw: bytes) -> bool:
        verdict = self._origin_verdicts.get(raw)
        if verdict is None:
            try:
                origin = parse_origin(raw.decode("latin-1"), "Origin")
            except ConfigError:  # "null", a path, another scheme, garbage
                verdict = False
            else:
                verdict = origin in self.origins or self.own_host(_host_of_origin(origin))
            _remember(self._origin_verdicts, raw, verdict)
        return verdict


def _remember(cache: dict[bytes, bool], key: bytes, verdict: bool) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()  # many distinct values: somebody is trying; the parse is cheap
    cache[key] = verdict


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _is_operator(handler: Any) -> bool:
    return any(getattr(guard, "func", guard) is operator_guard for guard in handler.resolve_guards())


def origin_middleware(server: ServerSettings) -> Any:
    """The middleware factory for ``Litestar(middleware=[...])``: Litestar builds one per
    route handler, after routing, so ``scope["route_handler"]`` is known."""
    policy = OriginPolicy(server)
    operator_handlers: dict[int, bool] = {}

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP:
                handler = scope["route_handler"]
                operator = operator_handlers.get(id(handler))
                if operator is None:
                    operator = operator_handlers[id(handler)] = _is_operator(handler)
                if operator:
                    host = _header(scope["headers"], b"host")
                    if host is not None and not policy.host_allowed(host):
                        raise MISDIRECTED.error()
                if operator or scope["method"] not in SAFE_METHODS:
                    origin = _header(scope["headers"], b"origin")
                    if origin is not None and not policy.origin_allowed(origin):
                        raise CROSS_ORIGIN.error()
            await app(scope, receive, send)

        return middleware

    return factory
