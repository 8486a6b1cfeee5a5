"""The ``JOBNODE_*`` variables a deployment sets instead of keys in the file, secrets
among them."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from app.config.settings import Settings
from app.config.values import ConfigError

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
    "JOBNODE_WEBHOOK_SECRET": "webhooks.secret",
    "JOBNODE_LOG_LEVEL": "log_level",
}


def apply_environment(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
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
