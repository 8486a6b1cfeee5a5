"""Reading a config file and validating it, the environment's overrides applied.

An Infernet ``config.json`` must load unchanged, so the keys that only the Infernet node
uses are dropped (and reported once) before the strict conversion; every other unknown
key is an error that names it, because a typo in a config silently ignored is worse
than a node that refuses to start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.config.environment import apply_environment
from app.config.settings import ContainerSettings, Settings
from app.config.values import ConfigError, parse_host, parse_networks, parse_origin

#: The two database URL schemes the node runs on (its engines and direct paths are written
#: for these drivers).
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")
_DATABASE_URL_HINT = "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user:password@host:5432/db"

#: Top-level keys of an Infernet config that jobnode accepts and ignores.
INFERNET_TOP_LEVEL_KEYS = ("chain", "redis", "forward_stats", "snapshot_sync", "log", "log_path", "startup_wait")
#: Container keys of an Infernet config that only matter on chain.
INFERNET_CONTAINER_KEYS = ("allowed_addresses", "allowed_delegate_addresses", "accepted_payments")


def _strip_infernet_keys(raw: dict[str, Any]) -> list[str]:
    ignored = [key for key in INFERNET_TOP_LEVEL_KEYS if key in raw]
    for key in ignored:
        raw.pop(key)
    containers = raw.get("containers")
    if isinstance(containers, list):
        for index, container in enumerate(containers):
            if isinstance(container, dict):
                for key in INFERNET_CONTAINER_KEYS:
                    if key in container:
                        container.pop(key)
                        ignored.append(f"containers[{index}].{key}")
                # Infernet configs write a container's port as a string ("3000").
                port = container.get("port")
                if isinstance(port, str) and port.isdigit():
                    container["port"] = int(port)
    return ignored


#: ``server.max_json_depth`` at most: encoding and decoding recurse once per level, and
#: a value near Python's recursion limit (1000 frames, some already in use) fails them.
MAX_JSON_DEPTH_LIMIT = 500


def _positive(value: float, key: str, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {value}")


def _validate_numbers(settings: Settings) -> None:
    server, scheduler = settings.server, settings.scheduler
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"server.port: {server.port} is not a TCP port")
    for key in (
        "max_body_bytes",
        "max_batch",
        "max_ids",
        "max_subscriptions",
        "max_json_depth",
        "workers",
        "max_event_streams",
    ):
        _positive(getattr(server, key), f"server.{key}")
    if server.max_json_depth > MAX_JSON_DEPTH_LIMIT:
        # Deeper values would again meet Python's recursion limit on the way in or out.
        raise ConfigError(f"server.max_json_depth: must be at most {MAX_JSON_DEPTH_LIMIT}, got {server.max_json_depth}")
    _positive(server.max_wait, "server.max_wait", minimum=0)
    _positive(server.poll_hold, "server.poll_hold", minimum=0)
    _positive(server.sse_keepalive, "server.sse_keepalive", minimum=0.01)
    if server.rate_limit is not None:
        _positive(server.rate_limit.num_requests, "server.rate_limit.num_requests")
        _positive(server.rate_limit.period, "server.rate_limit.period", minimum=0.001)
    _positive(scheduler.max_concurrent_jobs, "scheduler.max_concurrent_jobs")
    _positive(scheduler.max_attempts, "scheduler.max_attempts")
    _positive(scheduler.lease_seconds, "scheduler.lease_seconds", minimum=0.1)
    _positive(scheduler.poll_interval, "scheduler.poll_interval", minimum=0.001)
    _positive(settings.database.pool_size, "database.pool_size")
    _positive(settings.database.connect_timeout, "database.connect_timeout", minimum=0.1)
    _positive(settings.database.statement_timeout, "database.statement_timeout", minimum=0.1)
    _positive(settings.retention.finished_jobs_days, "retention.finished_jobs_days", minimum=0)
    if not settings.retention.idempotency_hours > 0:
        raise ConfigError(
            f"retention.idempotency_hours: must be more than 0, got {settings.retention.idempotency_hours}"
        )


def _validate_containers(settings: Settings) -> None:
    seen: set[str] = set()
    used_ports = {c.port for c in settings.containers if c.port is not None}
    next_port = 3000
    for index, container in enumerate(settings.containers):
        key = f"containers[{index}]"
        if not container.id:
            raise ConfigError(f"{key}.id: must not be empty")
        if container.id in seen:
            raise ConfigError(f"{key}.id: duplicate container id {container.id!r}")
        seen.add(container.id)
        if settings.manage_containers and not container.runs_elsewhere and not (container.image or container.build):
            raise ConfigError(f"{key}.image: required for a container the node manages (or set url)")
        if settings.server.workers > 1 and settings.managed(container):
            # Every worker would run the container on the Docker Engine at once.
            raise ConfigError(
                f"server.workers: {settings.server.workers} workers cannot manage containers "
                f"({key} {container.id!r}); run them elsewhere (url, or manage_containers: false)"
            )
        if container.url is not None and not container.url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.url: {container.url!r} is not an http(s) URL")
        parse_networks(container.allowed_ips, f"{key}.allowed_ips")
        _positive(container.concurrency, f"{key}.concurrency")
        _positive(container.timeout, f"{key}.timeout", minimum=0.001)
        _positive(container.retries, f"{key}.retries", minimum=0)
        _validate_retry(container, key)
        if container.port is None:
            while next_port in used_ports:
                next_port += 1
            container.port = next_port
            used_ports.add(next_port)
        elif not 1 <= container.port <= 65535:
            raise ConfigError(f"{key}.port: {container.port} is not a TCP port")


def _validate_retry(container: ContainerSettings, key: str) -> None:
    retry = container.retry
    _positive(retry.attempts, f"{key}.retry.attempts", minimum=0)
    if not retry.backoff > 0:
        raise ConfigError(f"{key}.retry.backoff: must be more than 0, got {retry.backoff}")
    if retry.max_backoff < retry.backoff:
        raise ConfigError(
            f"{key}.retry.max_backoff: must be at least retry.backoff ({retry.backoff}), got {retry.max_backoff}"
        )


def settings_from_dict(raw: dict[str, Any], *, environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a decoded config object and apply the environment overrides."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    raw = msgspec.json.decode(msgspec.json.encode(raw))  # a private copy to strip keys from
    ignored = _strip_infernet_keys(raw)
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        message, at, path = str(exc).rpartition(" - at `$")
        if not at:
            raise ConfigError(str(exc)) from None
        # "Expected `int`, got `str` - at `$.server.port`" -> "server.port: Expected …": the key
        # first, as in every other message (and as the environment's errors find it).
        raise ConfigError(f"{path.lstrip('.').rstrip('`') or 'the top level'}: {message}") from None
    settings.ignored_keys = ignored
    from_environment = apply_environment(settings, os.environ if environ is None else environ)
    try:
        _validate_numbers(settings)
        _validate_database_url(settings.database.url)
        _validate_log_level(settings.log_level)
        parse_networks(settings.server.trusted_proxies, "server.trusted_proxies")
        settings.server.allowed_hosts = [
            parse_host(h, f"server.allowed_hosts[{i}]") for i, h in enumerate(settings.server.allowed_hosts)
        ]
        settings.server.allowed_origins = [
            parse_origin(o, f"server.allowed_origins[{i}]") for i, o in enumerate(settings.server.allowed_origins)
        ]
        _validate_containers(settings)
        _validate_webhooks(settings)
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        if key in from_environment:  # the value came from a variable: name it too
            raise ConfigError(f"{from_environment[key]}: {exc}") from None
        raise
    return settings


def _validate_webhooks(settings: Settings) -> None:
    from app.jobs.webhook_policy import AllowList

    AllowList.parse(settings.webhooks.allowed_hosts)
    _positive(settings.webhooks.timeout, "webhooks.timeout", minimum=0.001)
    _positive(settings.webhooks.max_attempts, "webhooks.max_attempts")
    _positive(settings.webhooks.concurrency, "webhooks.concurrency")


def _validate_database_url(url: str) -> None:
    """A URL of a scheme the node runs on, checked at start rather than at the first connect
    (where ``mysql://…`` or a typo would surface as a missing module deep in SQLAlchemy)."""
    try:
        scheme = make_url(url).drivername
    except ArgumentError:
        shown = f" {url!r}" if "@" not in url else ""  # it may hold a password
        raise ConfigError(f"database.url: invalid database URL{shown}: {_DATABASE_URL_HINT}") from None
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(
            f"database.url: invalid database URL: jobnode does not run on {scheme}://; {_DATABASE_URL_HINT}"
        )


def _validate_log_level(level: str) -> None:
    if not isinstance(logging.getLevelName(level.upper()), int):
        raise ConfigError(f"log_level: unknown level {level!r} (DEBUG, INFO, WARNING, ERROR)")


def load_settings(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file named by ``path`` or ``JOBNODE_CONFIG``; no file means all defaults."""
    env = os.environ if environ is None else environ
    path = path or env.get("JOBNODE_CONFIG")
    if not path:
        return settings_from_dict({}, environ=env)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return settings_from_dict(raw, environ=env)
