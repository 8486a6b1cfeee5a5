"""Images for managed containers: build from a context directory, or use the local
image and pull it only when it is absent.

The build context is tarred in a worker thread (a large context must not stall the
event loop) and streamed to ``POST /build``; a failing build step arrives in the JSON
stream and surfaces as an :class:`ImageError` whose text is the engine's own message.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from app.config.settings import ContainerSettings, DockerSettings


class ImageError(Exception):
    """The image cannot be built or pulled; the message says why in plain words."""


def image_ref(container: ContainerSettings) -> str:
    """The image a container runs: its ``image``, or ``jobnode/<id>:latest`` for a build."""
    if container.image:
        return container.image
    name = re.sub(r"[^a-z0-9._-]+", "-", container.id.lower()).strip("-._") or "container"
    return f"jobnode/{name}:latest"


def _ignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """``.dockerignore`` as (exception, regex) rules; the last rule that matches wins."""
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).strip("/")
        rules.append((exception, re.compile(_glob_to_regex(pattern))))
    return rules


def _glob_to_regex(pattern: str) -> str:
    """Docker's globs: ``*`` and ``?`` stay within one path element, ``**`` crosses them;
    a pattern also matches everything below a directory it matches."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if pattern.startswith("/", i):
                out.append("/?")
                i += 1
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            close = pattern.find("]", i)
            if close == -1:
                out.append(re.escape(char))
            else:
                out.append(pattern[i : close + 1].replace("[!", "[^"))
                i = close
        else:
            out.append(re.escape(char))
        i += 1
    return "^" + "".join(out) + "(/.*)?$"


def tar_context(context: Path) -> io.BytesIO:
    """The build context as an uncompressed tar archive (blocking: run it in a thread).

    ``.dockerignore`` is honoured like the docker CLI does (globs, ``**``, ``!``
    exceptions); the Dockerfile and ``.dockerignore`` are always sent.
    """
    rules = _ignore_rules(context)
    has_exceptions = any(exception for exception, _ in rules)

    def ignored(relative: str) -> bool:
        result = False
        for exception, regex in rules:
            if regex.match(relative):
                result = not exception
        return result

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for root, dirs, files in os.walk(context):
            rel_root = os.path.relpath(root, context)
            rel_root = "" if rel_root == "." else rel_root + "/"
            dirs.sort()
            if not has_exceptions:  # without exceptions nothing below an ignored dir comes back
                dirs[:] = [d for d in dirs if not ignored(rel_root + d)]
            for name in sorted(files):
                relative = rel_root + name
                if relative not in ("Dockerfile", ".dockerignore") and ignored(relative):
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
