"""What a managed container is made from: its name, its create spec and the spec's hash.

An existing container is reused only when nothing about it changed (unlike the Infernet
node): the create spec and the image id are hashed into the ``jobnode.spec`` label, and a
restarted node finds its own container again by its stable name.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

from app.config.settings import ContainerSettings, Settings
from app.containers.images import image_ref

LABEL_MANAGED = "jobnode.managed"
LABEL_NODE = "jobnode.node"
LABEL_CONTAINER = "jobnode.container"
LABEL_SPEC = "jobnode.spec"

#: The port a service listens on inside its container with bridge networking.
CONTAINER_PORT = 3000


def container_name(container: ContainerSettings) -> str:
    """Stable name so that a restarted node finds its own container again."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]+", "_", container.id).lstrip("_.-") or "container"
    return f"jobnode-{safe}-{container.port}"


def env_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bind(volume: str) -> str:
    """``host:container[:mode]``; a relative host path is resolved against the cwd."""
    host, sep, rest = volume.partition(":")
    if sep and not host.startswith("/") and (host.startswith((".", "~")) or "/" in host):
        host = str(Path(host).expanduser().resolve())
    return f"{host}{sep}{rest}"


def create_spec(settings: Settings, container: ContainerSettings) -> dict[str, Any]:
    """The body of ``POST /containers/create`` (without the ``jobnode.spec`` label)."""
    env: dict[str, str] = {}
    host_config: dict[str, Any] = {"RestartPolicy": {"Name": "unless-stopped"}}
    spec: dict[str, Any] = {"Image": image_ref(container)}
    if settings.docker.network_mode == "host":
        env["HOST"] = "127.0.0.1"
        env.update({key: env_value(value) for key, value in container.env.items()})
        env["PORT"] = str(container.port)  # the node calls this port: the config's value wins
        host_config["NetworkMode"] = "host"
    else:
        env.update({key: env_value(value) for key, value in container.env.items()})
        host_config["NetworkMode"] = "bridge"
        spec["ExposedPorts"] = {f"{CONTAINER_PORT}/tcp": {}}
        host_config["PortBindings"] = {
            f"{CONTAINER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(container.port)}]
        }
    spec["Env"] = [f"{key}={value}" for key, value in env.items()]
    if container.command is not None:
        spec["Cmd"] = shlex.split(container.command) if isinstance(container.command, str) else list(container.command)
    if container.volumes:
        host_config["Binds"] = [_bind(volume) for volume in container.volumes]
    if container.gpu:
        host_config["DeviceRequests"] = [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
    spec["Labels"] = {
        **settings.docker.labels,
        LABEL_MANAGED: "1",
        LABEL_NODE: settings.node_id,
        LABEL_CONTAINER: container.id,
    }
    spec["HostConfig"] = host_config
    return spec


def spec_hash(spec: dict[str, Any], image_id: str) -> str:
    payload = json.dumps({"spec": spec, "image": image_id}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
