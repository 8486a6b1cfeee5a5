"""Images for managed containers: build from a context directory, or use the local
image and pull it only when it is absent.

The build context is tarred in a worker thread (a large context must not stall the
event loop) and streamed to ``POST /build``; a failing build step arrives in the JSON
stream and surfaces as an :class:`ImageError` whose text is the engine's own message.
"""

from __future__ import annotations

import asyncio
import fnmatch
import io
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from app.config import ContainerSettings, DockerSettings


class ImageError(Exception):
    """The image cannot be built or pulled; the message says why in plain words."""


def image_ref(container: ContainerSettings) -> str:
    """The image a container runs: its ``image``, or ``jobnode/<id>:latest`` for a build."""
    if container.image:
        return container.image
    name = re.sub(r"[^a-z0-9._-]+", "-", container.id.lower()).strip("-._") or "container"
    return f"jobnode/{name}:latest"


def _ignore_patterns(context: Path) -> list[str]:
    """``.dockerignore`` patterns (plain globs; ``!`` exceptions are not supported)."""
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            patterns.append(line.strip("/").removeprefix("./"))
    return patterns


def tar_context(context: Path) -> io.BytesIO:
    """The build context as an uncompressed tar archive (blocking: run it in a thread)."""
    patterns = _ignore_patterns(context)

    def ignored(relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for root, dirs, files in os.walk(context):
            rel_root = os.path.relpath(root, context)
            rel_root = "" if rel_root == "." else rel_root + "/"
            dirs[:] = sorted(d for d in dirs if not ignored(rel_root + d))
            for name in sorted(files):
                relative = rel_root + name
                if relative != "Dockerfile" and ignored(relative):
                    continue
                tar.add(os.path.join(root, name), arcname=relative, recursive=False)
    buffer.seek(0)
    return buffer


def _build_error(exc: DockerError) -> str:
    return str(exc.message).strip() or repr(exc)


async def build_image(docker: aiodocker.Docker, context: str, tag: str) -> str:
    """Build ``tag`` from the context directory (relative to the working directory)."""
    path = Path(context).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_dir():
        raise ImageError(f"cannot build image {tag}: build context {context!r} is not a directory ({path})")
    if not (path / "Dockerfile").is_file():
        raise ImageError(f"cannot build image {tag}: no Dockerfile in build context {path}")
    archive = await asyncio.to_thread(tar_context, path)
    try:
        await docker.images.build(fileobj=archive, encoding="application/x-tar", tag=tag, rm=True, forcerm=True)
    except DockerError as exc:
        raise ImageError(f"cannot build image {tag} from {path}: {_build_error(exc)}") from None
    return await image_id(docker, tag)


async def image_id(docker: aiodocker.Docker, ref: str) -> str:
    info = await docker.images.inspect(ref)
    return str(info["Id"])


def _pull_name(ref: str) -> str:
    """aiodocker wants a registry host in the name when credentials go along."""
    first, sep, _rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if sep else f"docker.io/library/{ref}"


async def pull_image(docker: aiodocker.Docker, ref: str, settings: DockerSettings) -> str:
    auth: dict[str, Any] | None = None
    name = ref
    if settings.username:
        auth = {"username": settings.username, "password": settings.password or ""}
        name = _pull_name(ref)
    try:
        await docker.images.pull(name, auth=auth)
    except DockerError as exc:
        raise ImageError(f"image {ref} is not present locally and cannot be pulled: {_build_error(exc)}") from None
    try:
        return await image_id(docker, ref)
    except DockerError as exc:
        raise ImageError(f"image {ref} was pulled but cannot be inspected: {_build_error(exc)}") from None


async def ensure_image(docker: aiodocker.Docker, container: ContainerSettings, settings: DockerSettings) -> str:
    """Build (``build`` set) or find/pull the container's image; returns the image id."""
    ref = image_ref(container)
    if container.build:
        return await build_image(docker, container.build, ref)
    try:
        return await image_id(docker, ref)
    except DockerError as exc:
        if exc.status != 404:
            raise
    return await pull_image(docker, ref, settings)
