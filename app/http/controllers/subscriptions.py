"""``/api/subscriptions``: a client's subscriptions (SPEC §7), their jobs, and cancelling
one. Another client's subscription is answered exactly as an unknown one."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, MediaType, Request, delete, get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from app.errors import INVALID_PARAMETER, SUBSCRIPTION_NOT_FOUND
from app.http import params
from app.http.identity import ClientIdentity
from app.http.openapi import BAD_REQUEST, CROSS_SITE, DATABASE, RATE_LIMITED, errors
from app.jobs.subscriptions import SubscriptionService, UnknownCursor

MAX_PAGE = 100_000
#: Documented as a UUID; one that is not is a subscription nobody has (404).
SubscriptionIdPath = Annotated[str, PathParameter(format="uuid", description="The subscription's id")]


_ONE = errors(BAD_REQUEST, SUBSCRIPTION_NOT_FOUND, RATE_LIMITED, DATABASE)
_PAGE = errors(SUBSCRIPTION_NOT_FOUND, INVALID_PARAMETER, RATE_LIMITED, DATABASE)


def _known(subscription: str) -> str:
    known = params.uuid_text(subscription)
    if known is None:
        raise SUBSCRIPTION_NOT_FOUND.error()
    return known


def _page(limit: str | None, after: str | None) -> tuple[int | None, str | None]:
    return (
        None if limit is None else params.integer("limit", limit, 1, MAX_PAGE),
        None if after is None else params.uuid_param("after", after),
    )


class SubscriptionsController(Controller):
    path = "/api/subscriptions"
    tags = ["subscriptions"]

    @get(
        "/",
        media_type=MediaType.JSON,
        summary="This client's subscription ids, oldest first",
        responses=errors(INVALID_PARAMETER, RATE_LIMITED, DATABASE),
    )
    async def ids(
        self,
        request: Request[Any, Any, Any],
        subscriptions: NamedDependency[SubscriptionService],
        identity: NamedDependency[ClientIdentity],
        active: Annotated[
            str | None, QueryParameter(required=False, description="`true`: only active ones; `false`: the others")
        ] = None,
        limit: Annotated[str | None, QueryParameter(required=False, description="At most this many")] = None,
        after: Annotated[str | None, QueryParameter(required=False, description="The page after this id")] = None,
    ) -> list[str]:
        only = None if active is None else params.flag("active", active)
        size, cursor = _page(limit, after)
        try:
            return await subscriptions.ids(identity.address(request), only, cursor, size)
        except UnknownCursor:
            raise INVALID_PARAMETER.error({"name": "after", "value": after}) from None

    @get("/{subscription:str}", media_type=MediaType.JSON, summary="One subscription", responses=_ONE)
    async def show(
        self,
        request: Request[Any, Any, Any],
        subscription: SubscriptionIdPath,
        subscriptions: NamedDependency[SubscriptionService],
        identity: NamedDependency[ClientIdentity],
    ) -> dict[str, Any]:
        return await subscriptions.document(identity.address(request), _known(subscription))

    @get(
        "/{subscription:str}/jobs",
        media_type=MediaType.JSON,
        summary="A subscription's interval jobs, in interval order",
        responses=_PAGE,
    )
    async def jobs(
        self,
        request: Request[Any, Any, Any],
        subscription: SubscriptionIdPath,
        subscriptions: NamedDependency[SubscriptionService],
        identity: NamedDependency[ClientIdentity],
        limit: Annotated[str | None, QueryParameter(required=False, description="At most this many")] = None,
        after: Annotated[str | None, QueryParameter(required=False, description="The page after this job")] = None,
    ) -> list[dict[str, Any]]:
        size, cursor = _page(limit, after)
        try:
            return await subscriptions.jobs(identity.address(request), _known(subscription), cursor, size)
        except UnknownCursor:
            raise INVALID_PARAMETER.error({"name": "after", "value": after}) from None

    @delete(
        "/{subscription:str}",
        media_type=MediaType.JSON,
        status_code=200,
        summary="Cancel a subscription",
        description="No interval starts after it; an interval job that is running ends as it would.",
        responses=errors(BAD_REQUEST, SUBSCRIPTION_NOT_FOUND, CROSS_SITE, RATE_LIMITED, DATABASE),
    )
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        subscription: SubscriptionIdPath,
        subscriptions: NamedDependency[SubscriptionService],
        identity: NamedDependency[ClientIdentity],
    ) -> dict[str, Any]:
        return await subscriptions.cancel(identity.address(request), _known(subscription))
