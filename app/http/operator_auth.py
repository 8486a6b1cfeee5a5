"""Who may use the operator endpoints (job detail, cancel, retry, containers, metrics,
dashboard).

- ``server.operator_token`` set: ``Authorization: Bearer <token>`` (any client address).
  The dashboard also takes the token once as ``?token=``, answers with an HTTP-only,
  ``SameSite=Strict`` cookie and a redirect that drops the token from the address bar;
  the cookie holds an HMAC of the token, not the token, and it is accepted for reads
  (GET) only, so a cancel or a retry always needs the header.
- unset: loopback clients only, as identified by ``ClientIdentity`` (so a trusted proxy
  forwarding a remote client's request is not loopback).

The compatible surface never goes through this.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.errors import LOOPBACK_ONLY, OPERATOR_TOKEN_INVALID, OPERATOR_TOKEN_REQUIRED
from app.http.identity import ClientIdentity

COOKIE = "jobnode_operator"
STATE_KEY = "operator_auth"

#: Route handlers with this ``opt`` key accept ``?token=`` (the dashboard page).
ACCEPTS_QUERY_TOKEN = "accepts_query_token"


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (``::ffff:127.0.0.1``)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped.is_loopback
    return parsed.is_loopback


class OperatorAuth:
    def __init__(self, token: str | None, identity: ClientIdentity) -> None:
        self.token = token or None
        self.identity = identity

    def cookie_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), b"jobnode operator cookie", hashlib.sha256).hexdigest()

    def token_matches(self, presented: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(presented.encode(), self.token.encode())

    def check(self, connection: ASGIConnection[Any, Any, Any, Any], accepts_query_token: bool = False) -> None:
        """Raise a 401/403 ``ClientError`` unless the request may use operator endpoints."""
        if self.token is None:
            address = self.identity.address(connection)
            if not is_loopback(address):
                raise LOOPBACK_ONLY.error({"address": address})
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="jobnode operator"'}
        header = connection.headers.get("authorization")
        if header is not None:
            scheme, _, presented = header.partition(" ")
            if scheme.lower() == "bearer" and self.token_matches(presented.strip()):
                return
            raise OPERATOR_TOKEN_INVALID.error(headers=challenge)
        if accepts_query_token and "token" in connection.query_params:
            if self.token_matches(connection.query_params["token"]):
                return
            raise OPERATOR_TOKEN_INVALID.error(headers=challenge)
        cookie = connection.cookies.get(COOKIE)
        if cookie is not None and connection.scope.get("method") in ("GET", "HEAD"):
            if hmac.compare_digest(cookie.encode(), self.cookie_value().encode()):
                return
            raise OPERATOR_TOKEN_INVALID.error(headers=challenge)
        raise OPERATOR_TOKEN_REQUIRED.error(headers=challenge)


def operator_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    auth: OperatorAuth = connection.app.state[STATE_KEY]
    auth.check(connection, accepts_query_token=bool(handler.opt.get(ACCEPTS_QUERY_TOKEN)))
