"""Settings: one JSON file, typed with msgspec, environment overrides on top
(``ENVIRONMENT``: the variables a deployment sets, secrets among them).

An Infernet ``config.json`` must load unchanged, so the keys that only the Infernet node
uses are dropped (and reported once) before the strict conversion; every other unknown
key is an error that names it, because a typo in a config silently ignored is worse
than a node that refuses to start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.storable import DEFAULT_MAX_DEPTH

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///jobnode.db"
#: The two database URL schemes the node runs on (its engines and direct paths are written
#: for these drivers).
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")
_DATABASE_URL_HINT = "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user:password@host:5432/db"

#: Every setting a deployment can pass in the environment instead of the file, by variable
#: (SPEC §11: no secret needs to be in the file). An explicit list rather than a
#: ``JOBNODE_<SECTION>_<KEY>`` rule: the names the spec fixes (``JOBNODE_PORT``,
#: ``JOBNODE_OPERATOR_TOKEN``) follow no one rule, keys with underscores would make such
#: names ambiguous, and the README's table is this list (a test holds them together).
#: An empty variable counts as unset.
ENVIRONMENT: dict[str, str] = {
    "JOBNODE_DATABASE_URL": "database.url",
    "JOBNODE_DATABASE_POOL_SIZE": "database.pool_size",
    "JOBNODE_DATABASE_CONNECT_TIMEOUT": "database.connect_timeout",
    "JOBNODE_HOST": "server.host",
    "JOBNODE_PORT": "server.port",
    "JOBNODE_WORKERS": "server.workers",
    "JOBNODE_OPERATOR_TOKEN": "server.operator_token",
    "JOBNODE_CONTAINER_HOST": "server.container_host",
    "JOBNODE_NODE_ID": "scheduler.node_id",
    "JOBNODE_SCHEDULER_ENABLED": "scheduler.enabled",
    "JOBNODE_MAX_CONCURRENT_JOBS": "scheduler.max_concurrent_jobs",
    "JOBNODE_RETENTION_DAYS": "retention.finished_jobs_days",
    "JOBNODE_MANAGE_CONTAINERS": "manage_containers",
    "JOBNODE_DOCKER_URL": "docker.url",
    "JOBNODE_DOCKER_USERNAME": "docker.username",
    "JOBNODE_DOCKER_PASSWORD": "docker.password",
    "JOBNODE_LOG_LEVEL": "log_level",
}
#: Shown as ``"***"`` by ``masked`` (``jobnode config check``) when set; so are a
#: container's ``bearer`` and ``env`` values and the database URL's password.
SECRET_KEYS = ("server.operator_token", "docker.password")
MASK = "***"

#: Top-level keys of an Infernet config that jobnode accepts and ignores.
INFERNET_TOP_LEVEL_KEYS = ("chain", "redis", "forward_stats", "snapshot_sync", "log", "log_path", "startup_wait")
#: Container keys of an Infernet config that only matter on chain.
INFERNET_CONTAINER_KEYS = ("allowed_addresses", "allowed_delegate_addresses", "accepted_payments")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RateLimit(_Section):
    num_requests: int = 600
    period: float = 60.0


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 4000
    rate_limit: RateLimit | None = msgspec.field(default_factory=RateLimit)
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    max_ids: int = 1000
    #: Deepest nesting of objects/arrays accepted in a job's ``data`` and stored from a
    #: container's output (``app.storable``): deeper values fail alone, 400 or ContainerError.
    max_json_depth: int = DEFAULT_MAX_DEPTH
    #: Node processes behind the one port (``app.workers``); each is a whole node.
    workers: int = 1
    #: The longest ``GET /api/jobs?id=…&wait=`` may wait, in seconds.
    max_wait: float = 30.0
    #: A read without ``wait`` of jobs running on this node waits this long at most for
    #: them to end (0: answer at once); see ``JobService.results``.
    poll_hold: float = 0.05
    operator_token: str | None = None
    #: Origins (``scheme://host[:port]``) besides the node's own whose browser requests
    #: are served (``app.http.origin``); e.g. a proxy's public address.
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    #: Host names besides ``server.host``, ``localhost`` and loopback addresses that the
    #: node answers to on its operator endpoints (DNS rebinding, ``app.http.origin``).
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    #: Where managed containers (and unmanaged ones without a ``url``) are reached.
    container_host: str = "127.0.0.1"


class DatabaseSettings(_Section):
    url: str = DEFAULT_DATABASE_URL
    pool_size: int = 20
    #: Seconds to open a connection (TCP, TLS, authentication).
    connect_timeout: float = 5.0
    #: Seconds one database call may take (each statement, COMMIT, waiting for a pooled
    #: connection): a database that hangs gives 503 within seconds, not minutes (SPEC §10).
    statement_timeout: float = 5.0


class SchedulerSettings(_Section):
    #: False: this node serves the API and claims no jobs (others on the database run them).
    enabled: bool = True
    max_concurrent_jobs: int = 64
    lease_seconds: float = 30.0
    max_attempts: int = 3
    poll_interval: float = 1.0
    shutdown_grace: float = 10.0
    #: Stable identity of this node; a restarted node with the same id takes its own
    #: orphaned jobs back at once. Defaults to ``hostname:port``.
    node_id: str | None = None


class RetentionSettings(_Section):
    finished_jobs_days: float = 30.0


class DockerSettings(_Section):
    url: str | None = None
    network_mode: Literal["bridge", "host"] = "bridge"
    username: str | None = None
    password: str | None = None
    stop_containers_on_shutdown: bool = True
    #: Extra labels put on every container the node creates (the node adds its own).
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class ContainerSettings(_Section):
    id: str
    image: str = ""
    build: str | None = None
    description: str = ""
    external: bool = True
    port: int | None = None
    url: str | None = None
    bearer: str | None = None
    command: str | list[str] | None = None
    env: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    volumes: list[str] = msgspec.field(default_factory=list)
    gpu: bool = False
    allowed_ips: list[str] = msgspec.field(default_factory=list)
    generates_proofs: bool = False
    concurrency: int = 16
    timeout: float = 180.0
    retries: int = 0
    health_path: str | None = None
    startup_timeout: float = 60.0

    @property
    def runs_elsewhere(self) -> bool:
        """A container with a ``url`` runs elsewhere; the node only calls it."""
        return self.url is not None


class Settings(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    manage_containers: bool = True
    docker: DockerSettings = msgspec.field(default_factory=DockerSettings)
    containers: list[ContainerSettings] = msgspec.field(default_factory=list)
    log_level: str = "INFO"

    #: Keys of an Infernet config that were present and ignored (filled by the loader).
    ignored_keys: list[str] = msgspec.field(default_factory=list)

    @property
    def node_id(self) -> str:
        return self.scheduler.node_id or f"{socket.gethostname()}:{self.server.port}"

    def container(self, container_id: str) -> ContainerSettings | None:
        for container in self.containers:
            if container.id == container_id:
                return container
        return None

    def managed(self, container: ContainerSettings) -> bool:
        """Does this node run the container on the Docker Engine?"""
        return self.manage_containers and not container.runs_elsewhere

    def base_url(self, container: ContainerSettings) -> str:
        """Where the container protocol is spoken (SPEC §3)."""
        if container.url is not None:
            return container.url.rstrip("/")
        return f"http://{self.server.container_host}:{container.port}"


def parse_networks(values: list[str], key: str) -> list[IpNetwork]:
    """Addresses and CIDR ranges; a plain address is a /32 (or /128) network."""
    networks: list[IpNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not an IP address or CIDR range") from None
    return networks


_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
_ORIGIN = re.compile(r"(https?)://(\[[0-9a-f:.]+\]|[^/:\[\]]+)(?::([0-9]{1,5}))?")


def parse_host(value: str, key: str) -> str:
    """A host name or IP address as the Host header carries it, without a port;
    lower case, without brackets or a trailing dot."""
    host = value.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    if _HOST_NAME.fullmatch(host) is None:
        raise ConfigError(f"{key}: {value!r} is not a host name or IP address (no scheme, port or path)")
    return host


def parse_origin(value: str, key: str) -> str:
    """An origin, ``scheme://host[:port]``, normalised as ``app.http.origin`` compares
    them: lower case, the default port left out."""
    match = _ORIGIN.fullmatch(value.strip().lower().rstrip("/"))
    if match is None:
        raise ConfigError(f"{key}: {value!r} is not an origin (http(s)://host[:port], no path)")
    scheme, host, port = match.groups()
    host = parse_host(host, key)
    if port is not None and not 1 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} has no valid port")
    if port is None or int(port) == (443 if scheme == "https" else 80):
        return f"{scheme}://{_bracketed(host)}"
    return f"{scheme}://{_bracketed(host)}:{int(port)}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
    for key in ("max_body_bytes", "max_batch", "max_ids", "max_json_depth", "workers"):
        _positive(getattr(server, key), f"server.{key}")
    if server.max_json_depth > MAX_JSON_DEPTH_LIMIT:
        # Deeper values would again meet Python's recursion limit on the way in or out.
        raise ConfigError(f"server.max_json_depth: must be at most {MAX_JSON_DEPTH_LIMIT}, got {server.max_json_depth}")
    _positive(server.max_wait, "server.max_wait", minimum=0)
    _positive(server.poll_hold, "server.poll_hold", minimum=0)
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
        if container.port is None:
            while next_port in used_ports:
                next_port += 1
            container.port = next_port
            used_ports.add(next_port)
        elif not 1 <= container.port <= 65535:
            raise ConfigError(f"{key}.port: {container.port} is not a TCP port")


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
    from_environment = _apply_environment(settings, os.environ if environ is None else environ)
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
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        if key in from_environment:  # the value came from a variable: name it too
            raise ConfigError(f"{from_environment[key]}: {exc}") from None
        raise
    return settings


def _apply_environment(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """Set the keys of ``ENVIRONMENT`` whose variable is set, converting the text to the
    key's type ("true", "8", "2.5"); returns ``{key: variable}`` of those set."""
    applied: dict[str, str] = {}
    for variable, key in ENVIRONMENT.items():
        value = env.get(variable)
        if not value:
            continue
        *sections, name = key.split(".")
        target: msgspec.Struct = settings
        for section in sections:
            target = getattr(target, section)
        field_type = next(f.type for f in msgspec.structs.fields(type(target)) if f.name == name)
        try:
            setattr(target, name, msgspec.convert(value, field_type, strict=False))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{variable}: {value!r} is not a valid {key} ({exc})") from None
        applied[key] = variable
    return applied


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


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-ready data with every secret shown as ``"***"``
    (unset ones stay ``null``, so that one sees whether they are set)."""
    raw: dict[str, Any] = msgspec.to_builtins(settings)
    raw.pop("ignored_keys", None)
    raw["scheduler"]["node_id"] = settings.node_id
    for key in SECRET_KEYS:
        section, name = key.split(".")
        if raw[section][name] is not None:
            raw[section][name] = MASK
    raw["database"]["url"] = make_url(settings.database.url).render_as_string(hide_password=True)
    for container in raw["containers"]:
        if container.get("bearer") is not None:
            container["bearer"] = MASK
        container["env"] = dict.fromkeys(container.get("env", {}), MASK)
    return raw


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
