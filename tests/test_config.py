"""Configuration (SPEC §4): defaults, an Infernet config.json, errors that name the key,
environment overrides, and the CLI refusing a bad file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, load_settings, settings_from_dict

JOBNODE = Path(sys.executable).parent / "jobnode"

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
    "docker": {"username": "operator", "password": "secret"},
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
    assert (settings.scheduler.max_concurrent_jobs, settings.scheduler.lease_seconds,
            settings.scheduler.max_attempts, settings.scheduler.poll_interval) == (64, 30, 3, 1.0)
    assert settings.retention.finished_jobs_days == 30
    assert settings.manage_containers is True
    assert settings.docker.network_mode == "bridge"
    assert settings.containers == [] and settings.ignored_keys == []


def test_container_defaults():
    (container,) = settings_from_dict({"containers": [{"id": "echo", "image": "jobnode/echo"}]}, environ={}).containers
    assert (container.description, container.external, container.url, container.allowed_ips,
            container.generates_proofs, container.concurrency, container.timeout, container.retries) == (
        "", True, None, [], False, 16, 180, 0
    )


def test_an_infernet_config_loads_and_reports_what_it_ignores(tmp_path):
    settings = load_settings(write_config(tmp_path, INFERNET_CONFIG), environ={})
    assert sorted(settings.ignored_keys) == sorted([
        "chain", "redis", "forward_stats", "snapshot_sync", "log", "log_path", "startup_wait",
        "containers[0].allowed_addresses", "containers[0].allowed_delegate_addresses",
        "containers[0].accepted_payments",
    ])
    assert settings.server.port == 4000
    assert (settings.server.rate_limit.num_requests, settings.server.rate_limit.period) == (100, 100)
    assert (settings.docker.username, settings.docker.password) == ("operator", "secret")
    hello, second = settings.containers
    assert (hello.id, hello.image, hello.external, hello.port, hello.command) == (
        "hello-world", "ritualnetwork/hello-world-infernet:latest", True, 3000, "--bind=0.0.0.0:3000 --workers=2"
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
        ({"containers": [{"id": "a", "url": "http://x"}, {"id": "b", "url": "http://x", "allowed_ips": ["nope"]}]},
         "containers[1].allowed_ips"),
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
        ({"server": {"workers": 2}, "containers": [{"id": "a", "image": "x"}]}, "server.workers"),
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
    with pytest.raises(ConfigError, match="JOBNODE_PORT|server.port"):
        load_settings(path, environ={"JOBNODE_PORT": "99999"})


@pytest.mark.parametrize(
    ("command", "raw", "key"),
    [
        (["serve"], {"server": {"port": "x"}}, "server.port"),
        (["db", "upgrade"], {"containers": [{"id": "a", "url": "http://x", "allowed_ips": ["300.1.1.1"]}]},
         "containers[0].allowed_ips"),
    ],
)
def test_the_cli_refuses_a_bad_config_naming_the_key(tmp_path, command, raw, key):
    path = write_config(tmp_path, raw, "bad.json")
    done = subprocess.run([str(JOBNODE), *command, "--config", str(path)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0, done
    assert key in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "jobnode.db").exists()
