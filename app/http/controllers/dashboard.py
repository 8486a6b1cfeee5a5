"""``/dashboard``: the operator's page, and the JSON it polls.

The page takes the operator token once as ``?token=``: it answers with the cookie of
``app.http.operator_auth`` and a redirect to itself without the token.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from litestar import Controller, MediaType, Request, Response, get
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Redirect

from app.http import dashboard_page
from app.http.openapi import BAD_REQUEST, DATABASE, OPERATOR, OPERATOR_SECURITY, RATE_LIMITED, errors
from app.http.operator_auth import ACCEPTS_QUERY_TOKEN, COOKIE, STATE_KEY, OperatorAuth, operator_guard
from app.jobs.dashboard import Dashboard


def _csp(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class DashboardController(Controller):
    path = "/dashboard"
    tags = ["operator"]
    guards = [operator_guard]
    security = OPERATOR_SECURITY

    @get(
        "/",
        media_type=MediaType.HTML,
        summary="Operator dashboard (HTML)",
        description="Queue depth and throughput, containers, recent and failed jobs with their steps; refreshed "
        "every 2 s. `?token=` sets an HTTP-only cookie and redirects here without it.",
        opt={ACCEPTS_QUERY_TOKEN: True},
        responses={
            303: ResponseSpec(None, description="`?token=` accepted: the cookie is set, see Location"),
            **errors(BAD_REQUEST, OPERATOR, RATE_LIMITED, DATABASE),
        },
    )
    async def page(
        self,
        request: Request[Any, Any, Any],
        dashboard: NamedDependency[Dashboard],
        token: Annotated[
            str | None, QueryParameter(description="The operator token, once (checked by the guard)")
        ] = None,
    ) -> Response[Any]:
        auth: OperatorAuth = request.app.state[STATE_KEY]
        if auth.token is not None and token is not None:  # checked by the guard
            cookie = Cookie(key=COOKIE, value=auth.cookie_value(), path="/", httponly=True, samesite="strict")
            return Redirect("/dashboard", status_code=303, cookies=[cookie])
        nonce = secrets.token_urlsafe(16)
        body = dashboard_page.render(await dashboard.data(), nonce)
        return Response(
            body,
            media_type=MediaType.HTML,
            headers={
                "Content-Security-Policy": _csp(nonce),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    @get(
        "/data",
        media_type=MediaType.JSON,
        summary="The dashboard's data",
        description="Queue (pending, running, oldest pending), queue depth samples, throughput per minute for "
        "the last 10 minutes, containers, recent jobs and recently failed jobs with their error.",
        responses=errors(OPERATOR, RATE_LIMITED, DATABASE),
    )
    async def data(self, dashboard: NamedDependency[Dashboard]) -> dict[str, Any]:
        return await dashboard.data()
