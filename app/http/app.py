"""The Litestar application: routes, dependencies, error shapes, limits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from app import __version__
from app.config import ServerSettings, parse_networks
from app.http.client import ClientIdentity
from app.http.controllers.dashboard import DashboardController
from app.http.controllers.jobs import JobsApi, JobsController, JobsReference, document_read_limits
from app.http.controllers.jobs_endpoint import jobs_endpoint
from app.http.controllers.metrics import MetricsController
from app.http.controllers.node import NodeController
from app.http.controllers.operator import ContainersController, OperatorJobsController
from app.http.controllers.stream import StreamController
from app.http.errors import exception_handlers
from app.http.openapi import components, document_handlers
from app.http.operator_auth import STATE_KEY, OperatorAuth
from app.http.origin import origin_middleware
from app.http.prometheus import prometheus_config
from app.http.ratelimit import rate_limit_config


def _constant(value: Any) -> Provide:
    def provide() -> Any:
        return value

    return Provide(provide, use_cache=True, sync_to_thread=False)


def create_app(
    server: ServerSettings,
    services: dict[str, Any],
    lifespan: Sequence[Callable[[Litestar], AbstractAsyncContextManager[None]]] = (),
) -> Litestar:
    """``services`` are injected by name into the controllers (``jobs``, ``containers``,
    ``operator``…)."""
    identity = ClientIdentity(parse_networks(server.trusted_proxies, "server.trusted_proxies"))
    # HTTP request metrics; then Origin/Host (a refused request spends no rate-limit quota).
    middleware: list[Any] = [prometheus_config().middleware, origin_middleware(server)]
    if server.rate_limit is not None:
        limit = rate_limit_config(server.rate_limit.num_requests, server.rate_limit.period, identity.address)
        middleware.append(limit.middleware)
    jobs_api = JobsApi(services["jobs"], identity, server)
    dependencies = {
        **{name: _constant(service) for name, service in services.items()},
        "identity": _constant(identity),
        "server": _constant(server),
        "jobs_api": _constant(jobs_api),
    }
    app = Litestar(
        route_handlers=[
            NodeController, jobs_endpoint(jobs_api), JobsController, StreamController,
            OperatorJobsController, ContainersController, MetricsController, DashboardController,
        ],
        state=State({STATE_KEY: OperatorAuth(server.operator_token, identity)}),
        dependencies=dependencies,
        middleware=middleware,
        exception_handlers=exception_handlers(server.max_body_bytes),
        request_max_body_size=server.max_body_bytes,
        lifespan=list(lifespan),
        openapi_config=OpenAPIConfig(
            title="jobnode", version=__version__, path="/docs", render_plugins=[SwaggerRenderPlugin()],
            components=components(),
        ),
        debug=False,
        # Logging is configured once, by app.logging (jobnode serve), not by Litestar.
        logging_config=None,
    )
    document_handlers(app, [JobsReference], dependencies)
    document_read_limits(app.openapi_schema, server)
    return app
