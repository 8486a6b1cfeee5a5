"""The node's container image and the compose file (SPEC §11).

The image is built from this tree (once per content: its tag is a hash of the Dockerfile
and the package's sources, so CI rebuilds only when they changed), then two node
containers run with host networking against this machine's PostgreSQL (a fresh
database): a job submitted through either is read back through the other. Containers
carry ``jobnode.deploy-test=1`` and are removed by that label before and after.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from tests.helpers import job
from tests.support import create_pg_database, drop_pg_database, free_port, unavailable

# On one pytest-xdist worker, with every test of the Docker Engine (README, Development).
pytestmark = pytest.mark.xdist_group("docker")

ROOT = Path(__file__).resolve().parents[1]
LABEL = "jobnode.deploy-test=1"
IMAGE_REPOSITORY = "jobnode-deploy-test/node"
#: What the image is made of (see .dockerignore); app/_migrations is a link into migrations/.
IMAGE_INPUTS = ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "app", "migrations"]


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def inputs_digest() -> str:
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        path = ROOT / name
        files = (
            [path]
            if path.is_file()
            else sorted(
                p for p in path.rglob("*") if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts
            )
        )
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_args() -> list[str]:
    """This machine's pip index, and the CAs it trusts beyond the system's (a TLS-inspecting
    egress proxy): the build reaches the same registry as the host's pip does."""
    args: list[str] = []
    index = subprocess.run(["pip", "config", "get", "global.index-url"], capture_output=True, text=True)
    if index.returncode == 0 and index.stdout.strip().startswith("http"):
        args += ["--build-arg", f"PIP_INDEX_URL={index.stdout.strip()}"]
    extra_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if extra_cas:
        args += ["--build-arg", "PIP_CA_CERT=" + "\n".join(p.read_text() for p in extra_cas)]
    return args


def remove_test_containers() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if ids:
        docker("rm", "-f", *ids)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        unavailable("Docker Engine", "`docker info` fails (start it with `bash .ci/docker.sh`)")
    tag = f"{IMAGE_REPOSITORY}:{inputs_digest()}"
    if docker("image", "inspect", tag, check=False).returncode != 0:
        started = time.monotonic()
        docker("build", "--network", "host", "-t", tag, *build_args(), str(ROOT), timeout=900)
        print(f"built {tag} in {time.monotonic() - started:.0f} s")
        # Older builds of this test are of no use any more.
        for old in docker("images", IMAGE_REPOSITORY, "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
            if old != tag:
                docker("rmi", old, check=False)
    remove_test_containers()
    try:
        yield tag
    finally:
        remove_test_containers()


@pytest.fixture
def database() -> Iterator[str]:
    try:
        url = asyncio.run(create_pg_database(prefix="jobnode_image"))
    except Exception as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    try:
        yield url
    finally:
        asyncio.run(drop_pg_database(url))


def run_node(image: str, name: str, database_url: str, port: int, config: Path) -> str:
    """A node container on the host's network: settings and secrets from the environment,
    the container list from a mounted config file."""
    return docker(
        "run",
        "-d",
        "--name",
        name,
        "--label",
        LABEL,
        "--network",
        "host",
        "-e",
        f"JOBNODE_DATABASE_URL={database_url}",
        "-e",
        f"JOBNODE_PORT={port}",
        "-e",
        "JOBNODE_CONFIG=/etc/jobnode/config.json",
        "-v",
        f"{config}:/etc/jobnode/config.json:ro",
        image,
        "serve",
        "--host",
        "127.0.0.1",
    ).stdout.strip()


def wait_ready(name: str, url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{url}/health/ready", timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = docker("inspect", "-f", "{{.State.Status}}", name, check=False).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = docker("logs", "--tail", "40", name, check=False)
            raise AssertionError(f"{name} not ready ({state}): {logs.stdout}{logs.stderr}")
        time.sleep(0.2)


def finished(url: str, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{url}/api/jobs", params={"id": job_id}, timeout=10)
        assert r.status_code == 200, r.text
        (result,) = r.json()
        if result["status"] != "running" or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


@pytest.fixture
def config_file(host_service) -> Iterator[Path]:
    """The node's containers: the echo test service as a host process (readable by the
    image's user, uid 10001, hence a directory of its own outside pytest's 0700 tree)."""
    echo = host_service("echo")
    directory = Path(tempfile.mkdtemp(prefix="jobnode-image-"))
    directory.chmod(0o755)
    path = directory / "config.json"
    path.write_text(json.dumps({"containers": [{"id": "echo", "url": echo.url}]}))
    path.chmod(0o644)
    try:
        yield path
    finally:
        shutil.rmtree(directory)


@pytest.mark.docker
@pytest.mark.slow
def test_image_runs_nodes_sharing_one_database(image: str, database: str, config_file: Path) -> None:
    user = docker("image", "inspect", "-f", "{{.Config.User}} {{json .Config.Healthcheck.Test}}", image).stdout
    assert user.startswith("jobnode ") and "/health/live" in user, user  # non-root, probes liveness
    nodes = []
    for n in (1, 2):
        port = free_port()
        name = f"jobnode-deploy-test-{n}-{port}"
        run_node(image, name, database, port, config_file)
        nodes.append((name, f"http://127.0.0.1:{port}"))
    for name, url in nodes:
        wait_ready(name, url)

    # Submitted through one node, read back through the other: one database.
    submitted = {}
    for name, url in nodes:
        r = httpx.post(f"{url}/api/jobs", json=job("echo", data={"via": name}), timeout=10)
        assert r.status_code == 200, r.text
        submitted[name] = r.json()["id"]
    for (name, _), (_, other_url) in zip(nodes, reversed(nodes), strict=True):
        result = finished(other_url, submitted[name])
        assert (result["status"], result["result"]) == ("success", {"container": "echo", "output": {"via": name}})

    # The image's own healthcheck (liveness) turns healthy.
    deadline = time.monotonic() + 60
    for name, _ in nodes:
        while (health := docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()) != "healthy":
            assert health == "starting" and time.monotonic() < deadline, health
            time.sleep(0.5)

    # A stop is clean (status 0).
    for name, _ in nodes:
        docker("stop", "-t", "30", name, timeout=60)
        assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"


def test_compose_file_is_valid() -> None:
    """Debian's docker-compose (1.29) reads the compose file; installed by .ci/run."""
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose", "not installed (apt-get install docker-compose; .ci/run does)")
    env = {**os.environ, "POSTGRES_PASSWORD": "secret", "DOCKER_GID": "998"}
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]  # the file as docker-compose resolved it
    assert set(services) == {"postgres", "node-1", "node-2"}
    node_1 = services["node-1"]
    assert "/var/run/docker.sock:/var/run/docker.sock:rw" in node_1["volumes"]
    assert node_1["group_add"] == ["998"]
    assert node_1["environment"]["JOBNODE_DATABASE_URL"].startswith("postgresql+asyncpg://jobnode:secret@")
    # Sized for a large jobs table (README "PostgreSQL sizing"), each size overridable.
    sizing = {"shared_buffers=1GB", "max_wal_size=8GB", "checkpoint_timeout=15min"}
    assert sizing <= set(services["postgres"]["command"]), services["postgres"]["command"]
    config_1 = json.loads((ROOT / "deploy" / "compose-node-1.json").read_text())
    config_2 = json.loads((ROOT / "deploy" / "compose-node-2.json").read_text())
    assert config_1["containers"][0]["build"] == "examples/echo"
    assert config_2["containers"][0]["url"] == f"http://127.0.0.1:{config_1['containers'][0]['port']}"
    # Without the password it refuses to start instead of running with an empty one.
    missing = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"},
        timeout=60,
    )
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr
    sized = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={**env, "POSTGRES_SHARED_BUFFERS": "256MB", "POSTGRES_MAX_WAL_SIZE": "2GB"},
        timeout=60,
    )
    command = yaml.safe_load(sized.stdout)["services"]["postgres"]["command"]
    assert {"shared_buffers=256MB", "max_wal_size=2GB"} <= set(command), command


COMPOSE_PROJECT = "jobnodedeploytest"
POSTGRES_CONTEXT = ROOT / "tests" / "images" / "postgres"


def compose(
    *args: str, env: dict[str, str], files: list[Path], timeout: float = 180, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["docker-compose", "-p", COMPOSE_PROJECT]
    for file in files:
        command += ["-f", str(file)]
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture
def postgres_image() -> str:
    """The offline stand-in for the official postgres image (tests/images/postgres)."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(POSTGRES_CONTEXT.iterdir()))).hexdigest()[:16]
    tag = f"jobnode-deploy-test/postgres:{digest}"
    if docker("image", "inspect", tag, check=False).returncode != 0:
        docker("build", "--network", "host", "-t", tag, str(POSTGRES_CONTEXT), timeout=900)
    return tag


def wait_until(check: Any, timeout: float, what: str, logs: Any) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{logs()}")
        time.sleep(0.5)


@pytest.mark.docker
@pytest.mark.slow
def test_compose_deployment_runs(image: str, postgres_image: str, tmp_path: Path) -> None:
    """compose.yaml brought up as it is, with free ports and test labels laid over it:
    PostgreSQL, node-1 running the echo container through the Docker socket, node-2
    calling it; a job submitted through one node is read back through the other."""
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose", "not installed (apt-get install docker-compose; .ci/run does)")
    ports = {"pg": free_port(), "node-1": free_port(), "node-2": free_port(), "echo": free_port()}
    directory = Path(tempfile.mkdtemp(prefix="jobnode-compose-"))
    directory.chmod(0o755)
    node_1 = json.loads((ROOT / "deploy" / "compose-node-1.json").read_text())
    node_1["docker"]["labels"] = {LABEL.split("=")[0]: "1"}  # removed with the test's containers
    node_1["containers"][0].update(port=ports["echo"], image="jobnode-deploy-test/echo:latest")
    node_2 = json.loads((ROOT / "deploy" / "compose-node-2.json").read_text())
    node_2["containers"][0]["url"] = f"http://127.0.0.1:{ports['echo']}"
    override = {"version": "3.8", "services": {}}
    for name, config in (("node-1", node_1), ("node-2", node_2)):
        (directory / f"{name}.json").write_text(json.dumps(config))
        (directory / f"{name}.json").chmod(0o644)
        override["services"][name] = {
            "environment": {"JOBNODE_PORT": str(ports[name])},
            "volumes": [f"{directory / name}.json:/etc/jobnode/config.json:ro"],
        }
    (directory / "override.yaml").write_text(yaml.safe_dump(override))
    files = [ROOT / "compose.yaml", directory / "override.yaml"]
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "compose-secret",
        "JOBNODE_PG_PORT": str(ports["pg"]),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "JOBNODE_IMAGE": image,
        "POSTGRES_IMAGE": postgres_image,
    }
    urls = {name: f"http://127.0.0.1:{ports[name]}" for name in ("node-1", "node-2")}

    def logs() -> str:
        return compose("logs", "--tail", "30", env=env, files=files, check=False).stdout[-6000:]

    compose("down", "-v", "-t", "5", env=env, files=files, check=False)
    try:
        compose("up", "-d", "--no-build", env=env, files=files)
        for name, url in urls.items():  # a node that started before PostgreSQL is restarted
            wait_until(
                lambda url=url: httpx.get(f"{url}/health/ready", timeout=2).status_code == 200,
                180,
                f"{name} ready",
                logs,
            )
        for name, url in urls.items():  # node-1 built and started echo; node-2 probes it
            wait_until(
                lambda url=url: [c["id"] for c in httpx.get(f"{url}/info", timeout=5).json()["containers"]] == ["echo"],
                180,
                f"echo ready on {name}",
                logs,
            )
        assert asyncio.run(_settings(ports["pg"], "compose-secret")) == {
            "shared_buffers": "1GB",
            "max_wal_size": "8GB",
            "checkpoint_timeout": "15min",
        }
        submitted = {}
        for name, url in urls.items():
            r = httpx.post(f"{url}/api/jobs", json=job("echo", data={"via": name}), timeout=10)
            assert r.status_code == 200, r.text
            submitted[name] = r.json()["id"]
        for name, other in (("node-1", "node-2"), ("node-2", "node-1")):
            result = finished(urls[other], submitted[name])
            assert (result["status"], result["result"]) == ("success", {"container": "echo", "output": {"via": name}})
    finally:
        compose("down", "-v", "-t", "30", env=env, files=files, check=False)
        remove_test_containers()
        shutil.rmtree(directory)


async def _settings(port: int, password: str) -> dict[str, str]:
    """The compose PostgreSQL's sizing, as the running server has it."""
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user="jobnode", password=password, database="jobnode", timeout=10
    )
    try:
        return {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "max_wal_size", "checkpoint_timeout")
        }
    finally:
        await conn.close()
