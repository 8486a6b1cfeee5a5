"""HTTP request metrics: Litestar's Prometheus plugin with a leaner middleware.

``PrometheusConfig(middleware_class=…)`` keeps the plugin's metrics (names, labels,
buckets: ``jobnode_http_requests_total``, ``…_request_duration_seconds``,
``…_requests_in_progress``, ``…_requests_error_total``) but the stock middleware builds a
``Request``, a label dict and four ``.labels()`` lookups for every request, on a surface
that clients poll every millisecond. This one caches the labelled
children per (method, route template, status) and reads the scope directly.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.types import Message, Receive, Scope, Send


class LeanPrometheusMiddleware(PrometheusMiddleware):
    def __init__(self, app: Any, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self._children: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}
        self._in_progress: dict[tuple[str, str], Any] = {}

    def _labels(self, method: str, path: str, status: int) -> dict[str, str | int | float]:
        return {"method": method, "path": path, "status_code": status, "app_name": self._config.app_name}

    def _finished(self, method: str, path: str, status: int) -> tuple[Any, Any, Any]:
        key = (method, path, status)
        children = self._children.get(key)
        if children is None:
            labels = self._labels(method, path, status)
            values = list(labels.values())
            children = self._children[key] = (
                self.request_count(labels).labels(*values),
                self.request_time(labels).labels(*values),
                self.requests_error_count(labels).labels(*values),
            )
        return children

    def _progress(self, method: str, path: str) -> Any:
        key = (method, path)
        gauge = self._in_progress.get(key)
        if gauge is None:
            labels = self._labels(method, path, 200)
            gauge = self._in_progress[key] = self.requests_in_progress(labels).labels(*labels.values())
        return gauge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"]
        excluded = self._config.excluded_http_methods
        if excluded and method in excluded:
            await self.app(scope, receive, send)
            return
        path = scope.get("path_template") or scope["path"] if self._config.group_path else scope["path"]
        start = time.perf_counter()
        status = 200
        elapsed = 0.0

        async def wrapped_send(message: Message) -> None:
            nonlocal status, elapsed
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                elapsed = time.perf_counter() - start
            await send(message)

        progress = self._progress(method, path)
        progress.inc()
        try:
            await self.app(scope, receive, wrapped_send)
        finally:
            progress.dec()
            count, duration, errors = self._finished(method, path, status)
            if status >= 500:
                errors.inc()
            count.inc()
            duration.observe(elapsed)


def prometheus_config() -> PrometheusConfig:
    """Grouped by route template, so job ids never become series."""
    return PrometheusConfig(
        app_name="jobnode", prefix="jobnode_http", group_path=True, middleware_class=LeanPrometheusMiddleware
    )
