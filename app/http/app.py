"""The Litestar application: routes, dependencies, error shapes, limits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

from app import __version__
from app.config.settings import ServerSettings
from app.config.values import parse_networks
from app.http.controllers.dashboard import DashboardController
from app.http.controllers.events import EventsController
from app.http.controllers.jobs import JobsApi, JobsController, JobsReference, document_read_limits
from app.http.controllers.jobs_endpoint import jobs_endpoint
from app.http.controllers.metrics import MetricsController
from app.http.controllers.node import NodeController
from app.http.controllers.operator import ContainersController, OperatorJobsController
from app.http.controllers.stream import StreamController
from app.http.controllers.subscriptions import SubscriptionsController
from app.http.errors import exception_handlers
from app.http.identity import ClientIdentity
from app.http.openapi import components, document_handlers
from app.http.operator_auth import STATE_KEY, OperatorAuth
from app.http.origin import origin_middleware
from app.http.prometheus import prometheus_config
from app.http.ratelimit import rate_limit_config

#: Where the node serves Swagger UI's own files (from the ``swagger-ui-bundle-v2`` package).
DOCS_ASSETS = "/docs/assets"


def _docs() -> tuple[OpenAPIConfig, Router]:
    """``/docs`` with Swagger UI's script, styles and icon served by the node itself: the page
    works without the internet and loads nothing from a CDN (Litestar's default)."""
    swagger = SwaggerRenderPlugin(
        js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
    )
    assets = create_static_files_router(
        DOCS_ASSETS,
        directories=[Path(str(swagger_ui_path))],
        name="docs-assets",
        cache_control=CacheControlHeader(max_age=86400),
        include_in_schema=False,
    )
    config = OpenAPIConfig(
        title="jobnode", version=__version__, path="/docs", render_plugins=[swagger], components=components()
    )
    return config, assets


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
    ``inspection``, ``actions``…)."""
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
    openapi_config, docs_assets = _docs()
    app = Litestar(
        route_handlers=[
            NodeController,
            jobs_endpoint(jobs_api),
            JobsController,
            EventsController,
            StreamController,
            SubscriptionsController,
            OperatorJobsController,
            ContainersController,
            MetricsController,
            DashboardController,
            docs_assets,
        ],
        state=State({STATE_KEY: OperatorAuth(server.operator_token, identity)}),
        dependencies=dependencies,
        middleware=middleware,
        exception_handlers=exception_handlers(server.max_body_bytes),
        request_max_body_size=server.max_body_bytes,
        lifespan=list(lifespan),
        openapi_config=openapi_config,
        debug=False,
        # Logging is configured once, by app.logging (jobnode serve), not by Litestar.
        logging_config=None,
    )
    document_handlers(app, [JobsReference], dependencies)
    document_read_limits(app.openapi_schema, server)
    return app
