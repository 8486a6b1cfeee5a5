"""The typed settings, one msgspec struct per section of the JSON file; unknown keys are
errors (``forbid_unknown_fields``): a typo silently ignored is worse than a node that
refuses to start."""

from __future__ import annotations

import socket
from typing import Literal

import msgspec

from app.storable import DEFAULT_MAX_DEPTH

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///jobnode.db"


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
    #: Active subscriptions per client (SPEC §7).
    max_subscriptions: int = 1000
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
    #: Concurrent ``GET /api/jobs/events`` streams per node; past it: 503.
    max_event_streams: int = 2000
    #: Seconds of silence after which an event stream sends a comment line (keep-alive).
    sse_keepalive: float = 15.0
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
    #: How long a submit's ``Idempotency-Key`` is honoured (SPEC §8); then it may be reused.
    idempotency_hours: float = 24.0


class DockerSettings(_Section):
    url: str | None = None
    network_mode: Literal["bridge", "host"] = "bridge"
    username: str | None = None
    password: str | None = None
    stop_containers_on_shutdown: bool = True
    #: Extra labels put on every container the node creates (the node adds its own).
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class RetrySettings(_Section):
    """Durable retries of a failed step (``app.scheduler.backoff``, ``app.scheduler.chain``): ``attempts`` more
    calls after the first, waiting ``backoff * 2**n`` seconds (with jitter, at most
    ``max_backoff``) in the database, not in this process."""

    attempts: int = 0
    backoff: float = 1.0
    max_backoff: float = 60.0


class WebhookSettings(_Section):
    """Jobs' webhooks (``app.maintenance.webhooks``)."""

    #: Where a webhook may point: host names, ``*.suffix`` wildcards, IP addresses and CIDR
    #: ranges. Empty: no webhook is accepted. A name entry never allows a loopback,
    #: private or link-local address it resolves to; an IP/CIDR entry must.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    #: Signs each POST (``Jobnode-Signature``) when set; ``JOBNODE_WEBHOOK_SECRET`` too.
    secret: str | None = None
    #: Seconds one POST may take, connection included.
    timeout: float = 10.0
    #: POSTs of one delivery before it is given up as failed.
    max_attempts: int = 12
    #: POSTs in flight at once on this node.
    concurrency: int = 16


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
    #: Immediate in-process re-sends of a call that never reached the container.
    retries: int = 0
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
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
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
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
