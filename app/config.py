"""Settings: one JSON file, typed with msgspec, environment overrides on top.

An Infernet ``config.json`` must load unchanged, so the keys that only the Infernet node
uses are dropped (and reported once) before the strict conversion; every other unknown
key is an error that names it, because a typo in a config silently ignored is worse
than a node that refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

import msgspec

from app.storable import DEFAULT_MAX_DEPTH

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///jobnode.db"

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
            raise ConfigError(f"server.workers: {settings.server.workers} workers cannot manage containers "
                              f"({key} {container.id!r}); run them elsewhere (url, or manage_containers: false)")
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


def settings_from_dict(raw: dict[str, Any], *, environ: dict[str, str] | None = None) -> Settings:
    """Validate a decoded config object and apply the environment overrides."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    raw = msgspec.json.decode(msgspec.json.encode(raw))  # a private copy to strip keys from
    ignored = _strip_infernet_keys(raw)
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc).replace("$.", "").replace("`$`", "the top level")) from None
    settings.ignored_keys = ignored
    env = os.environ if environ is None else environ
    if env.get("JOBNODE_DATABASE_URL"):
        settings.database.url = env["JOBNODE_DATABASE_URL"]
    if env.get("JOBNODE_PORT"):
        try:
            settings.server.port = int(env["JOBNODE_PORT"])
        except ValueError:
            raise ConfigError(f"JOBNODE_PORT: {env['JOBNODE_PORT']!r} is not a port number") from None
    _validate_numbers(settings)
    parse_networks(settings.server.trusted_proxies, "server.trusted_proxies")
    settings.server.allowed_hosts = [parse_host(h, f"server.allowed_hosts[{i}]")
                                     for i, h in enumerate(settings.server.allowed_hosts)]
    settings.server.allowed_origins = [parse_origin(o, f"server.allowed_origins[{i}]")
                                       for i, o in enumerate(settings.server.allowed_origins)]
    _validate_containers(settings)
    return settings


def load_settings(path: str | os.PathLike[str] | None = None, *, environ: dict[str, str] | None = None) -> Settings:
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
