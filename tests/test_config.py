"""Configuration (SPEC §4): defaults, an Infernet config.json, errors that name the key,
environment overrides, and the CLI refusing a bad file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config.environment import ENVIRONMENT
from app.config.loading import load_settings, settings_from_dict
from app.config.masking import masked
from app.config.values import ConfigError
from tests.support import run_jobnode

#: What an Infernet node operator has on disk (the hello-world starter's config).
INFERNET_CONFIG: dict[str, Any] = {
    "log_path": "infernet_node.log",
    "manage_containers": True,
    "server": {"port": 4000, "rate_limit": {"num_requests": 100, "period": 100}},
    "chain": {
        "enabled": True,
        "trail_head_blocks": 3,
        "rpc_url": "http://host.docker.internal:8545",
        "registry_address": "0x3B1554f346DFe5c482Bb4BA31b880c1C18412170",
        "wallet": {"max_gas_limit": 4000000, "private_key": "0x" + "ab" * 32, "allowed_sim_errors": []},
        "snapshot_sync": {"sleep": 3, "batch_size": 500, "starting_sub_id": 0, "sync_period": 0.5},
    },
    "snapshot_sync": {"sleep": 3, "batch_size": 100},
    "startup_wait": 1.0,
    "redis": {"host": "redis", "port": 6379},
    "forward_stats": True,
    "log": {"max_file_size": 1000000, "backup_count": 2},
    "docker": {"username": "operator", "password": "hunter2"},
    "containers": [
        {
            "id": "hello-world",
            "image": "ritualnetwork/hello-world-infernet:latest",
            "external": True,
            "port": "3000",
            "allowed_delegate_addresses": [],
            "allowed_addresses": ["0x0000000000000000000000000000000000000001"],
            "allowed_ips": ["10.0.0.0/8", "192.168.1.7"],
            "command": "--bind=0.0.0.0:3000 --workers=2",
            "env": {"MODEL_SOURCE": 1, "USE_JIT": "false"},
            "volumes": [],
            "accepted_payments": {"0x0000000000000000000000000000000000000000": 1000},
            "generates_proofs": False,
        },
        {
            "id": "second",
            "image": "ritualnetwork/other:1.0",
            "external": False,
            "port": 3001,
            "description": "a second step",
        },
    ],
}


def write_config(directory: Path, raw: Any, name: str = "config.json") -> Path:
    path = directory / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


def test_defaults():
    settings = load_settings(None, environ={})
    assert settings.server.host == "127.0.0.1" and settings.server.port == 4000
    assert (settings.server.rate_limit.num_requests, settings.server.rate_limit.period) == (600, 60)
    assert settings.server.trusted_proxies == []
    assert (settings.server.max_body_bytes, settings.server.max_batch, settings.server.max_ids) == (1048576, 1000, 1000)
    assert settings.database.url == "sqlite+aiosqlite:///jobnode.db"
    assert (settings.database.connect_timeout, settings.database.statement_timeout) == (5.0, 5.0)
    assert (
        settings.scheduler.max_concurrent_jobs,
        settings.scheduler.lease_seconds,
        settings.scheduler.max_attempts,
        settings.scheduler.poll_interval,
    ) == (64, 30, 3, 1.0)
    assert settings.retention.finished_jobs_days == 30
    assert settings.retention.idempotency_hours == 24
    assert settings.manage_containers is True
    assert settings.docker.network_mode == "bridge"
    assert settings.containers == [] and settings.ignored_keys == []


def test_container_defaults():
    (container,) = settings_from_dict({"containers": [{"id": "echo", "image": "jobnode/echo"}]}, environ={}).containers
    assert (
        container.description,
        container.external,
        container.url,
        container.allowed_ips,
        container.generates_proofs,
        container.concurrency,
        container.timeout,
        container.retries,
    ) == ("", True, None, [], False, 16, 180, 0)


def test_an_infernet_config_loads_and_reports_what_it_ignores(tmp_path):
    settings = load_settings(write_config(tmp_path, INFERNET_CONFIG), environ={})
    assert sorted(settings.ignored_keys) == sorted(
        [
            "chain",
            "redis",
            "forward_stats",
            "snapshot_sync",
            "log",
            "log_path",
            "startup_wait",
            "containers[0].allowed_addresses",
            "containers[0].allowed_delegate_addresses",
            "containers[0].accepted_payments",
        ]
    )
    assert settings.server.port == 4000
    assert (settings.server.rate_limit.num_requests, settings.server.rate_limit.period) == (100, 100)
    assert (settings.docker.username, settings.docker.password) == ("operator", "hunter2")
    hello, second = settings.containers
    assert (hello.id, hello.image, hello.external, hello.port, hello.command) == (
        "hello-world",
        "ritualnetwork/hello-world-infernet:latest",
        True,
        3000,
        "--bind=0.0.0.0:3000 --workers=2",
    )
    assert hello.allowed_ips == ["10.0.0.0/8", "192.168.1.7"]
    assert hello.env == {"MODEL_SOURCE": 1, "USE_JIT": "false"}
    assert (second.id, second.external, second.port, second.description) == ("second", False, 3001, "a second step")


def test_the_file_is_not_changed_by_loading(tmp_path):
    path = write_config(tmp_path, INFERNET_CONFIG)
    before = path.read_bytes()
    load_settings(path, environ={})
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": {"port": "x"}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"prot": 4000}}, "prot"),
        ({"unknown_section": {}}, "unknown_section"),
        ({"server": {"rate_limit": {"num_requests": 0, "period": 60}}}, "server.rate_limit.num_requests"),
        ({"server": {"trusted_proxies": ["proxy.local"]}}, "server.trusted_proxies"),
        ({"database": {"url": 5}}, "database.url"),
        ({"scheduler": {"max_attempts": 0}}, "scheduler.max_attempts"),
        ({"containers": [{"id": "a", "url": "http://x", "allowed_ips": ["10.0.0.0/33"]}]}, "containers[0].allowed_ips"),
        (
            {"containers": [{"id": "a", "url": "http://x"}, {"id": "b", "url": "http://x", "allowed_ips": ["nope"]}]},
            "containers[1].allowed_ips",
        ),
        ({"containers": [{"id": "a", "url": "http://x"}, {"id": "a", "url": "http://y"}]}, "containers[1].id"),
        ({"containers": [{"id": "a", "url": "http://x", "alowed_ips": []}]}, "alowed_ips"),
        ({"containers": [{"url": "http://x"}]}, "id"),
        ({"containers": [{"id": "a", "url": "ftp://x"}]}, "containers[0].url"),
        ({"containers": [{"id": "a", "url": "http://x", "port": "three"}]}, "containers[0].port"),
        ({"docker": {"network_mode": "overlay"}}, "docker.network_mode"),
        ({"server": {"workers": 0}}, "server.workers"),
        ({"server": {"max_wait": -1}}, "server.max_wait"),
        ({"database": {"statement_timeout": 0}}, "database.statement_timeout"),
        ({"database": {"statement_timeout": "5s"}}, "database.statement_timeout"),
        ({"database": {"connect_timeout": -1}}, "database.connect_timeout"),
        ({"retention": {"idempotency_hours": 0}}, "retention.idempotency_hours"),
        ({"retention": {"idempotency_hours": -1}}, "retention.idempotency_hours"),
        ({"server": {"workers": 2}, "containers": [{"id": "a", "image": "x"}]}, "server.workers"),
        ({"containers": [{"id": "a", "url": "http://x", "retry": {"attempts": -1}}]}, "containers[0].retry.attempts"),
        ({"containers": [{"id": "a", "url": "http://x", "retry": {"attempts": 1.5}}]}, "containers[0].retry.attempts"),
        ({"containers": [{"id": "a", "url": "http://x", "retry": {"backoff": 0}}]}, "containers[0].retry.backoff"),
        (
            {"containers": [{"id": "a", "url": "http://x", "retry": {"backoff": 5, "max_backoff": 2}}]},
            "containers[0].retry.max_backoff",
        ),
        ({"containers": [{"id": "a", "url": "http://x", "retry": {"tries": 2}}]}, "tries"),
    ],
)
def test_a_bad_value_or_unknown_key_names_the_key(raw, key):
    with pytest.raises(ConfigError) as error:
        settings_from_dict(raw, environ={})
    assert key in str(error.value)


def test_unreadable_or_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.json", environ={})
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_settings(write_config(tmp_path, '{"server": {"port": 4000,}}'), environ={})
    with pytest.raises(ConfigError, match="JSON object"):
        load_settings(write_config(tmp_path, "[]"), environ={})


def test_environment_overrides(tmp_path):
    path = write_config(tmp_path, {"server": {"port": 4100}, "database": {"url": "sqlite+aiosqlite:///from-file.db"}})
    settings = load_settings(path, environ={})
    assert (settings.server.port, settings.database.url) == (4100, "sqlite+aiosqlite:///from-file.db")
    env = {"JOBNODE_DATABASE_URL": "postgresql+asyncpg://u@db/jobs", "JOBNODE_PORT": "4555"}
    settings = load_settings(path, environ=env)
    assert (settings.server.port, settings.database.url) == (4555, "postgresql+asyncpg://u@db/jobs")
    # JOBNODE_CONFIG names the file when no path is given.
    assert load_settings(None, environ={"JOBNODE_CONFIG": str(path)}).server.port == 4100
    with pytest.raises(ConfigError, match="JOBNODE_PORT"):
        load_settings(path, environ={"JOBNODE_PORT": "http"})
    with pytest.raises(ConfigError, match=r"JOBNODE_PORT|server\.port"):
        load_settings(path, environ={"JOBNODE_PORT": "99999"})


@pytest.mark.parametrize(
    ("command", "raw", "key"),
    [
        (["serve"], {"server": {"port": "x"}}, "server.port"),
        (
            ["db", "upgrade"],
            {"containers": [{"id": "a", "url": "http://x", "allowed_ips": ["300.1.1.1"]}]},
            "containers[0].allowed_ips",
        ),
    ],
)
def test_the_cli_refuses_a_bad_config_naming_the_key(tmp_path, command, raw, key):
    path = write_config(tmp_path, raw, "bad.json")
    done = run_jobnode(*command, "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2, done
    assert key in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "jobnode.db").exists()


#: A value for every variable of ``ENVIRONMENT`` and what its key holds then.
ENV_SAMPLES: dict[str, tuple[str, Any]] = {
    "JOBNODE_DATABASE_URL": ("postgresql+asyncpg://jobs:pw@db:5432/jobs", "postgresql+asyncpg://jobs:pw@db:5432/jobs"),
    "JOBNODE_DATABASE_POOL_SIZE": ("7", 7),
    "JOBNODE_DATABASE_CONNECT_TIMEOUT": ("2.5", 2.5),
    "JOBNODE_HOST": ("0.0.0.0", "0.0.0.0"),
    "JOBNODE_PORT": ("4555", 4555),
    "JOBNODE_WORKERS": ("3", 3),
    "JOBNODE_OPERATOR_TOKEN": ("t0ken", "t0ken"),
    "JOBNODE_CONTAINER_HOST": ("172.17.0.1", "172.17.0.1"),
    "JOBNODE_NODE_ID": ("node-a", "node-a"),
    "JOBNODE_SCHEDULER_ENABLED": ("false", False),
    "JOBNODE_MAX_CONCURRENT_JOBS": ("9", 9),
    "JOBNODE_RETENTION_DAYS": ("0.5", 0.5),
    "JOBNODE_MANAGE_CONTAINERS": ("false", False),
    "JOBNODE_DOCKER_URL": ("unix:///run/docker.sock", "unix:///run/docker.sock"),
    "JOBNODE_DOCKER_USERNAME": ("robot", "robot"),
    "JOBNODE_DOCKER_PASSWORD": ("d0cker", "d0cker"),
    "JOBNODE_WEBHOOK_SECRET": ("wh-s3cret", "wh-s3cret"),
    "JOBNODE_LOG_LEVEL": ("DEBUG", "DEBUG"),
}


def _value(settings: Any, key: str) -> Any:
    for name in key.split("."):
        settings = getattr(settings, name)
    return settings


def test_every_variable_sets_its_key_over_the_file(tmp_path):
    assert set(ENV_SAMPLES) == set(ENVIRONMENT)
    path = write_config(
        tmp_path,
        {
            "server": {"port": 4100, "operator_token": "from-file"},
            "docker": {"password": "from-file"},
            "scheduler": {"enabled": True},
        },
    )
    for variable, (text, expected) in ENV_SAMPLES.items():
        key = ENVIRONMENT[variable]
        assert _value(load_settings(path, environ={}), key) != expected, variable
        assert _value(load_settings(path, environ={variable: text}), key) == expected, variable
    # An empty variable counts as unset: the file's value stays.
    assert load_settings(path, environ={"JOBNODE_OPERATOR_TOKEN": ""}).server.operator_token == "from-file"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBNODE_WORKERS": "two"}, "JOBNODE_WORKERS: 'two' is not a valid server.workers"),
        ({"JOBNODE_WORKERS": "0"}, "JOBNODE_WORKERS: server.workers: must be at least 1"),
        ({"JOBNODE_SCHEDULER_ENABLED": "maybe"}, "JOBNODE_SCHEDULER_ENABLED: 'maybe' is not a valid scheduler.enabled"),
        ({"JOBNODE_DATABASE_CONNECT_TIMEOUT": "soon"}, "JOBNODE_DATABASE_CONNECT_TIMEOUT: 'soon' is not a valid"),
        ({"JOBNODE_LOG_LEVEL": "LOUD"}, "JOBNODE_LOG_LEVEL: log_level: unknown level 'LOUD'"),
        ({"JOBNODE_DATABASE_URL": "mysql://a@b/c"}, "JOBNODE_DATABASE_URL: database.url: invalid database URL"),
        ({"JOBNODE_PORT": "70000"}, "JOBNODE_PORT: server.port: 70000 is not a TCP port"),
    ],
)
def test_a_bad_value_from_the_environment_names_the_variable(env, message):
    with pytest.raises(ConfigError) as raised:
        load_settings(None, environ=env)
    assert str(raised.value).startswith(message), str(raised.value)


def test_masked_shows_whether_a_secret_is_set_not_what_it_is():
    settings = settings_from_dict(
        {
            "containers": [{"id": "a", "url": "http://10.0.0.5:3000", "bearer": "b3arer", "env": {"API_KEY": "k3y"}}],
            "docker": {"password": "d0cker"},
            "webhooks": {"secret": "from-file"},
        },
        environ={
            "JOBNODE_OPERATOR_TOKEN": "t0ken",
            "JOBNODE_DATABASE_URL": "postgresql+asyncpg://u:pw@db/jobs",
            "JOBNODE_WEBHOOK_SECRET": "wh00k",
        },
    )
    assert settings.webhooks.secret == "wh00k"  # the environment wins
    shown = masked(settings)
    assert shown["server"]["operator_token"] == shown["docker"]["password"] == shown["webhooks"]["secret"] == "***"
    assert shown["docker"]["username"] is None  # unset stays null
    assert shown["database"]["url"] == "postgresql+asyncpg://u:***@db/jobs"
    assert shown["containers"][0]["bearer"] == "***" and shown["containers"][0]["env"] == {"API_KEY": "***"}
    assert not {"t0ken", "d0cker", "b3arer", "k3y", "pw", "wh00k", "from-file"} & set(
        json.dumps(shown).replace('"', " ").replace(":", " ").replace("@", " ").split()
    )
    assert settings.server.operator_token == "t0ken"  # the settings themselves are untouched


def test_config_check_prints_the_effective_configuration(tmp_path):
    path = write_config(tmp_path, INFERNET_CONFIG)
    done = run_jobnode(
        "config",
        "check",
        "--config",
        str(path),
        cwd=tmp_path,
        JOBNODE_OPERATOR_TOKEN="t0ken-from-env",
        JOBNODE_PORT="4321",
        JOBNODE_DATABASE_URL="postgresql+asyncpg://jobs:s3cret@db:5432/jobs",
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["server"]["port"] == 4321 and shown["server"]["operator_token"] == "***"
    assert shown["docker"] == {**shown["docker"], "username": "operator", "password": "***"}
    assert shown["database"]["url"] == "postgresql+asyncpg://jobs:***@db:5432/jobs"
    assert [c["id"] for c in shown["containers"]] == ["hello-world", "second"]
    for secret in ("t0ken-from-env", "s3cret", INFERNET_CONFIG["docker"]["password"]):
        assert secret not in done.stdout + done.stderr
    assert done.stderr.startswith("config keys ignored (Infernet-only): chain, redis,"), done.stderr
    assert not (tmp_path / "jobnode.db").exists()  # no database is opened


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({"server": {"port": "x"}}, {}, "server.port: Expected `int`, got `str`"),
        ({"database": {"pool_size": 0}}, {}, "database.pool_size: must be at least 1"),
        ({}, {"JOBNODE_PORT": "http"}, "JOBNODE_PORT: 'http' is not a valid server.port"),
        ({}, {"JOBNODE_DATABASE_URL": "garbage"}, "JOBNODE_DATABASE_URL: database.url: invalid database URL 'garbage'"),
    ],
)
def test_config_check_names_the_key_and_exits_2(tmp_path, raw, env, message):
    done = run_jobnode("config", "check", "--config", str(write_config(tmp_path, raw)), cwd=tmp_path, **env)
    assert done.returncode == 2, done
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"Error: invalid configuration: {message}"), done.stderr


def test_the_readme_documents_every_variable():
    """The README's table of variables is ``ENVIRONMENT``: each row names its key."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `JOBNODE_")}
    for variable, key in ENVIRONMENT.items():
        assert variable in rows, f"{variable} is not in the README's table"
        assert f"`{key}`" in rows[variable], (variable, rows[variable])


def test_retry_defaults_and_values():
    """A container's ``retry`` (SPEC §8): off by default; ``retries`` stays what it was."""
    (default,) = settings_from_dict({"containers": [{"id": "a", "url": "http://x"}]}, environ={}).containers
    assert (default.retries, default.retry.attempts, default.retry.backoff, default.retry.max_backoff) == (
        0,
        0,
        1.0,
        60.0,
    )
    raw = {"id": "a", "url": "http://x", "retries": 2, "retry": {"attempts": 3, "backoff": 2, "max_backoff": 2}}
    (container,) = settings_from_dict({"containers": [raw]}, environ={}).containers
    assert (container.retries, container.retry.attempts, container.retry.backoff, container.retry.max_backoff) == (
        2,
        3,
        2.0,
        2.0,
    )
