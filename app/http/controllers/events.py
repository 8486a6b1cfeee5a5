"""``GET /api/jobs/events``: a client's jobs as ``text/event-stream`` (SPEC §9).

The query is checked as ``GET /api/jobs?id=…`` checks it (same 400s), plus
``Last-Event-ID`` (the header, or ``last_event_id`` in the query for clients that cannot
set headers). The answer starts once every named job was read once, so a database that
cannot be reached is a 503, not an empty stream. The events themselves come from the
node's ``EventFeed`` (``app.jobs.events``).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream

from app.config.settings import ServerSettings
from app.errors import INVALID_JOB_ID, INVALID_PARAMETER, TOO_MANY_EVENT_STREAMS, TOO_MANY_IDS
from app.formatting import clipped
from app.http import params
from app.http.identity import ClientIdentity
from app.http.openapi import DATABASE, RATE_LIMITED, errors
from app.jobs.events import Event, EventFeed, Progress

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
_encode = msgspec.json.Encoder().encode
#: Proxies must not buffer the stream nor cache it.
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_DESCRIPTION = (
    "`event: step` per committed step (`{id, index, container, output|error}`), `event: job` when a job "
    "ended (its `JobResult` with `intermediate_results`), a comment line after `server.sse_keepalive` "
    "seconds of silence; the stream ends when every named job of this client ended (ids of other clients "
    "and unknown ids are left out; if none remains it ends at once). Each event's `id:` is opaque: send it "
    "back as `Last-Event-ID` on a reconnect to get only the events after it, read from the database."
)


def _frame(event: Event | None) -> bytes:
    if event is None:
        return KEEPALIVE
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.name.encode(), _encode(event.data))


async def _frames(events: AsyncIterator[Event | None]) -> AsyncIterator[bytes]:
    async for event in events:
        yield _frame(event)


def _query_ids(request: Request[Any, Any, Any], server: ServerSettings) -> list[str]:
    raw_ids = request.query_params.getall("id", [])
    if not raw_ids:
        raise INVALID_PARAMETER.error({"name": "id", "value": ""})
    if len(raw_ids) > server.max_ids:
        raise TOO_MANY_IDS.error({"limit": server.max_ids})
    return list(dict.fromkeys(params.job_id(value) for value in raw_ids))


def _last_counts(request: Request[Any, Any, Any], jobs: int) -> list[int]:
    header = request.headers.get("last-event-id")
    name, value = ("Last-Event-ID", header) if header is not None else ("last_event_id", None)
    if value is None:
        value = request.query_params.get("last_event_id")
    if value is None or value == "":  # EventSource sends none before its first event
        return [0] * jobs
    counts = Progress.parse(value, jobs)
    if counts is None:
        raise INVALID_PARAMETER.error({"name": name, "value": clipped(value)})
    return counts


class EventsController(Controller):
    tags = ["jobs"]

    @get(
        "/api/jobs/events",
        summary="Events of this client's jobs as they happen (Server-Sent Events)",
        description=_DESCRIPTION,
        media_type=MEDIA_TYPE,
        responses=errors(
            INVALID_JOB_ID, TOO_MANY_IDS, INVALID_PARAMETER, RATE_LIMITED, TOO_MANY_EVENT_STREAMS, DATABASE
        ),
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        events: NamedDependency[EventFeed],
        identity: NamedDependency[ClientIdentity],
        server: NamedDependency[ServerSettings],
        ids: Annotated[
            list[str] | None,
            QueryParameter(
                name="id",
                required=False,
                description="A job's id (a UUID); repeat it for several jobs (up to `server.max_ids`). At least one.",
            ),
        ] = None,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(name="Last-Event-ID", required=False, description="The `id:` of the last event received."),
        ] = None,
        last_event_id_query: Annotated[
            str | None,
            QueryParameter(name="last_event_id", required=False, description="The same, for clients without headers."),
        ] = None,
    ) -> Stream:
        """``ids`` and ``last_event_id`` are there for the document: the query and the
        header are parsed by hand (their 400s are part of the contract)."""
        job_ids = _query_ids(request, server)
        counts = _last_counts(request, len(job_ids))
        if events.streams >= server.max_event_streams:
            raise TOO_MANY_EVENT_STREAMS.error({"limit": server.max_event_streams}, headers={"Retry-After": "1"})
        watch = events.watch(identity.address(request), job_ids)
        try:
            await watch.first_seen()
        except BaseException:
            events.unwatch(watch)
            raise
        stream = events.events(watch, counts, server.sse_keepalive)
        # A response never sent never starts its generator, whose ``finally`` then never runs.
        weakref.finalize(stream, events.unwatch, watch)
        return Stream(_frames(stream), media_type=MEDIA_TYPE, headers=_HEADERS)
