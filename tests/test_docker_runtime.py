"""The container runtime against the real Docker Engine: real images, real containers,
real HTTP. Skipped when the engine is unreachable, a failure under
``JOBNODE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiodocker
import pytest

from app.config.settings import Settings
from app.containers.runtime import ContainerRuntime
from app.containers.spec import (
    LABEL_CONTAINER,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_SPEC,
    container_name,
    create_spec,
    spec_hash,
)
from app.containers.state import ContainerStates, Readiness
from tests.docker_support import (
    BUILT_IMAGES,
    ROOT,
    call_service,
    host_service,
    inspect,
    new_node_id,
    recorder,
    remove_containers,
    runtime_settings,
    service,
    wait_for,
)
from tests.support import free_port

# On one pytest-xdist worker, with every test of the Docker Engine (README, Development).
pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]


@pytest.fixture
def node_id() -> str:
    return new_node_id()


@pytest.fixture
async def runtimes(node_id: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., ContainerRuntime]]:
    """Make runtimes; all are stopped, and this test's containers removed, at the end."""
    monkeypatch.chdir(ROOT)  # relative build contexts resolve against the working directory
    made: list[ContainerRuntime] = []

    def make(settings: Settings, **kwargs: float) -> ContainerRuntime:
        runtime = ContainerRuntime(settings, ContainerStates(settings), **kwargs)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        await runtime.stop()
    try:
        await remove_containers(f"jobnode.node={node_id}")
    except Exception:
        pass


def states_of(runtime: ContainerRuntime) -> ContainerStates:
    return runtime._states


async def started(runtime: ContainerRuntime) -> ContainerRuntime:
    t0 = time.monotonic()
    await runtime.start()
    assert time.monotonic() - t0 < 0.5, "start() must not wait for images or containers"
    return runtime


# -- managed containers on the engine -------------------------------------------------


async def test_start_ready_labels_and_serves(docker_engine: None, node_id: str, runtimes) -> None:
    env = {"MODE": "transform", "FACTOR": 3, "ADD": 1, "NAME": "t"}  # numbers are stringified
    settings = runtime_settings([service("svc", env=env)], node_id=node_id)
    runtime = await started(runtimes(settings))
    state = states_of(runtime).get("svc")
    assert state is not None and not state.ready and state.readiness is Readiness.STARTING
    assert states_of(runtime).ready() == []

    assert await state.wait_ready(30), state.last_error
    assert [s.settings.id for s in states_of(runtime).ready()] == ["svc"]  # what /info lists
    assert state.last_error is None and state.docker_id

    status, output = await call_service(state.base_url, {"value": 2})
    assert (status, output) == (200, {"value": 7, "seen": ["t"]})

    info = await inspect(state.docker_id)
    assert info is not None and info["Name"] == f"/{container_name(settings.containers[0])}"
    labels = info["Config"]["Labels"]
    assert labels[LABEL_MANAGED] == "1" and labels[LABEL_NODE] == node_id and labels[LABEL_CONTAINER] == "svc"
    assert labels["jobnode.test"] == "1" and len(labels[LABEL_SPEC]) == 32
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert f"PORT={state.settings.port}" in info["Config"]["Env"] and "HOST=127.0.0.1" in info["Config"]["Env"]


async def test_build_from_context_dir(docker_engine: None, node_id: str, runtimes) -> None:
    BUILT_IMAGES.append("jobnode/jt-built:latest")
    settings = runtime_settings(
        [{"id": "jt-built", "build": "tests/services", "port": free_port(), "startup_timeout": 20}], node_id=node_id
    )
    runtime = await started(runtimes(settings))
    state = states_of(runtime).get("jt-built")
    assert await state.wait_ready(60), state.last_error
    assert (await call_service(state.base_url, {"x": [1, "two"]})) == (200, {"x": [1, "two"]})
    info = await inspect(state.docker_id)
    assert info["Config"]["Image"] == "jobnode/jt-built:latest"


async def test_image_that_cannot_be_built_fails(docker_engine: None, node_id: str, runtimes, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Dockerfile").write_text("FROM python:3.11-slim-bookworm\nCOPY missing.txt /missing.txt\n")
    settings = runtime_settings(
        [
            {"id": "jt-broken", "image": "jobnode-test/broken:latest", "build": str(broken), "port": free_port()},
            {"id": "jt-nodir", "build": "no/such/dir", "port": free_port()},
        ],
        node_id=node_id,
    )
    runtime = await started(runtimes(settings))
    broken_state, nodir = states_of(runtime).get("jt-broken"), states_of(runtime).get("jt-nodir")
    await wait_for(lambda: broken_state.readiness is nodir.readiness is Readiness.FAILED, 30, "both FAILED")
    assert broken_state.last_error.startswith(f"cannot build image jobnode-test/broken:latest from {broken}: ")
    assert "missing.txt" in broken_state.last_error  # the engine's own words
    assert nodir.last_error.startswith("cannot build image jobnode/jt-nodir:latest: build context 'no/such/dir'")


async def test_missing_image_fails_with_reason_others_run(docker_engine: None, node_id: str, runtimes) -> None:
    settings = runtime_settings(
        [
            service("ghost", image="jobnode-test/does-not-exist:nope"),
            service("good"),
        ],
        node_id=node_id,
    )
    runtime = await started(runtimes(settings))  # does not raise
    ghost, good = states_of(runtime).get("ghost"), states_of(runtime).get("good")
    await wait_for(lambda: ghost.readiness is Readiness.FAILED, 30, "ghost FAILED")
    assert "jobnode-test/does-not-exist:nope" in ghost.last_error
    assert "cannot be pulled" in ghost.last_error
    assert ghost.docker_id is None
    assert await good.wait_ready(30), good.last_error


async def test_exit_during_startup_fails_with_exit_code_and_logs(docker_engine: None, node_id: str, runtimes) -> None:
    command = ["python3", "-c", "import sys; print('model file missing', file=sys.stderr); sys.exit(3)"]
    settings = runtime_settings([service("crash", command=command)], node_id=node_id)
    runtime = await started(runtimes(settings))
    state = states_of(runtime).get("crash")
    await wait_for(lambda: state.readiness is not Readiness.STARTING, 20, "crash to leave STARTING")
    assert state.readiness is Readiness.FAILED
    assert "exited during startup (exit code 3)" in state.last_error
    assert "model file missing" in state.last_error
    assert state.restarts == 0
    # Stopped, not left crash-looping under Docker's restart policy.
    for _ in range(100):
        info = await inspect(state.docker_id)
        if not info["State"]["Running"]:
            break
        await asyncio.sleep(0.05)
    assert info["State"]["Running"] is False and info["State"]["Restarting"] is False
    restart_count = info["RestartCount"]
    await asyncio.sleep(0.5)
    assert (await inspect(state.docker_id))["RestartCount"] == restart_count


async def test_no_answer_within_startup_timeout_fails(docker_engine: None, node_id: str, runtimes) -> None:
    settings = runtime_settings(
        [service("mute", command="sleep 30", startup_timeout=1.0)],  # a string is shell-split
        node_id=node_id,
        docker={"stop_containers_on_shutdown": False},  # sleep ignores SIGTERM: no 10 s stop
    )
    runtime = await started(runtimes(settings))
    state = states_of(runtime).get("mute")
    await wait_for(lambda: state.readiness is Readiness.FAILED, 15, "mute FAILED")
    assert f"did not answer on 127.0.0.1:{state.settings.port} within 1 s" in state.last_error
    assert "connection refused" in state.last_error
    info = await inspect(state.docker_id)
    assert info["Config"]["Cmd"] == ["sleep", "30"]


async def test_killed_container_comes_back(docker_engine: None, node_id: str, runtimes) -> None:
    settings = runtime_settings([service("victim")], node_id=node_id)
    runtime = await started(runtimes(settings))
    state = states_of(runtime).get("victim")
    assert await state.wait_ready(30), state.last_error
    docker_id = state.docker_id
    transitions = recorder(state)

    async with aiodocker.Docker() as docker:
        await docker.containers.container(docker_id).kill()
    await wait_for(lambda: state.restarts == 1, 10, "the death to be seen")
    assert ("starting", "container died (exit code 137); restarting") in transitions

    assert await state.wait_ready(30), state.last_error
    assert transitions[-1] == ("ready", None)
    assert state.docker_id == docker_id and state.restarts == 1
    assert (await call_service(state.base_url, {"again": True})) == (200, {"again": True})
    info = await inspect(docker_id)
    assert info["State"]["Running"] is True


async def test_crashed_container_restarted_by_docker_comes_back(docker_engine: None, node_id: str, runtimes) -> None:
    """MODE=exit dies mid-request; Docker's restart policy brings it up, the node re-checks it."""
    settings = runtime_settings([service("crashy", env={"MODE": "exit"})], node_id=node_id)
    runtime = await started(runtimes(settings))
    state = states_of(runtime).get("crashy")
    assert await state.wait_ready(30), state.last_error
    transitions = recorder(state)

    with pytest.raises(Exception):  # noqa: B017 - the process exits without answering
        await call_service(state.base_url, {"job": 1})
    await wait_for(lambda: state.restarts == 1, 10, "the crash to be seen")
    assert ("starting", "container died (exit code 1); restarting") in transitions
    assert await state.wait_ready(30), state.last_error
    info = await inspect(state.docker_id)
    assert info["State"]["Running"] is True and info["RestartCount"] >= 1  # Docker restarted it


async def test_adopts_unchanged_recreates_changed_and_stop(docker_engine: None, node_id: str, runtimes) -> None:
    port = free_port()

    def config(mode: str, stop: bool) -> Settings:
        return runtime_settings(
            [service("keep", port=port, env={"MODE": mode})],
            node_id=node_id,
            docker={"stop_containers_on_shutdown": stop},
        )

    first = await started(runtimes(config("echo", stop=False)))
    state = states_of(first).get("keep")
    assert await state.wait_ready(30), state.last_error
    original = state.docker_id
    started_at = (await inspect(original))["State"]["StartedAt"]
    await first.stop()
    assert (await inspect(original))["State"]["Running"] is True  # left running

    # Unchanged: the same container is adopted, not restarted.
    second = await started(runtimes(config("echo", stop=False)))
    state = states_of(second).get("keep")
    assert await state.wait_ready(30), state.last_error
    assert state.docker_id == original
    assert (await inspect(original))["State"]["StartedAt"] == started_at
    await second.stop()

    # The environment changed: re-created (a new container), the old one is gone.
    third = await started(runtimes(config("transform", stop=True)))
    state = states_of(third).get("keep")
    assert await state.wait_ready(30), state.last_error
    assert state.docker_id != original
    assert await inspect(original) is None
    assert (await call_service(state.base_url, 5)) == (200, {"value": 10, "seen": ["transform"]})

    # stop() stops (does not remove) the node's containers.
    await third.stop()
    info = await inspect(state.docker_id)
    assert info is not None and info["State"]["Running"] is False
    assert state.readiness is Readiness.STOPPED


# -- no engine needed ---------------------------------------------------------------------


async def test_unreachable_engine_fails_managed_containers(node_id: str, runtimes) -> None:
    settings = runtime_settings(
        [service("a"), service("b"), {"id": "remote", "url": "http://127.0.0.1:9"}],
        node_id=node_id,
        docker={"url": "unix:///nonexistent.sock"},
    )
    runtime = await started(runtimes(settings))
    a, b, remote = (states_of(runtime).get(i) for i in ("a", "b", "remote"))
    await wait_for(lambda: a.readiness is b.readiness is Readiness.FAILED, 10, "managed containers FAILED")
    for state in (a, b):
        assert "Docker Engine unreachable at unix:///nonexistent.sock" in state.last_error
    # Run elsewhere, no health_path: probed by a TCP connect, and nothing listens there.
    await wait_for(lambda: remote.readiness is Readiness.FAILED, 10, "remote container probed down")
    assert remote.last_error == "127.0.0.1:9: connection refused"
    await runtime.stop()


async def test_unmanaged_health_path_probed(node_id: str, runtimes) -> None:
    up_port, down_port = free_port(), free_port()
    settings = runtime_settings(
        [
            {"id": "up", "url": f"http://127.0.0.1:{up_port}", "health_path": "/health", "startup_timeout": 10},
            {"id": "down", "url": f"http://127.0.0.1:{down_port}", "health_path": "/health", "startup_timeout": 0.5},
        ],
        node_id=node_id,
    )
    async with host_service(up_port) as process:
        runtime = await started(runtimes(settings, probe_interval=0.2))
        up, down = states_of(runtime).get("up"), states_of(runtime).get("down")
        assert await up.wait_ready(10), up.last_error
        await wait_for(lambda: down.readiness is Readiness.FAILED, 5, "down FAILED")
        assert down.last_error == f"GET http://127.0.0.1:{down_port}/health: connection refused"
        assert not down.ready

        process.terminate()
        await process.wait()
        await wait_for(lambda: up.readiness is Readiness.FAILED, 5, "up FAILED once it stops answering")
        assert "connection refused" in up.last_error

    async with host_service(down_port):
        await wait_for(lambda: down.ready, 5, "down READY once it answers")


async def test_published_port_needs_an_http_answer() -> None:
    """Bridge networking: Docker's proxy accepts on the published port before the service
    listens, then hangs up; that is not ready. Any HTTP answer is."""
    from app.containers.readiness import Prober

    async def accept_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = runtime_settings(
        [{"id": "b", "image": "i", "port": port}], node_id="n", docker={"network_mode": "bridge"}
    )
    prober = Prober(settings)
    try:
        assert await prober.probe(settings.containers[0]) is None  # a TCP connect alone succeeds
        assert await prober.probe(settings.containers[0], published=True) == "connection closed without an HTTP answer"
        server.close()
        await server.wait_closed()
        async with host_service(port):
            for _ in range(100):
                if await prober.probe(settings.containers[0], published=True) is None:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the service never answered")
    finally:
        server.close()
        await prober.close()


# -- the create spec (bridge networking cannot run on this machine) ---------------------


def test_create_spec_bridge_gpu_volumes_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = runtime_settings(
        [
            {
                "id": "gpu",
                "image": "acme/model:1",
                "port": 3007,
                "env": {"A": 1, "B": 2.5, "C": True, "D": "x y"},
                "command": "serve --model 'big model'",
                "volumes": ["/data:/data:ro", "./cache:/cache", "named:/named"],
                "gpu": True,
            }
        ],
        node_id="n1",
        docker={"network_mode": "bridge", "labels": {"team": "ml"}},
    )
    container = settings.containers[0]
    spec = create_spec(settings, container)
    assert spec["Image"] == "acme/model:1"
    assert spec["Env"] == ["A=1", "B=2.5", "C=true", "D=x y"]
    assert spec["Cmd"] == ["serve", "--model", "big model"]
    assert spec["ExposedPorts"] == {"3000/tcp": {}}
    host = spec["HostConfig"]
    assert host["NetworkMode"] == "bridge"
    assert host["PortBindings"] == {"3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3007"}]}
    assert host["Binds"] == ["/data:/data:ro", f"{tmp_path.resolve()}/cache:/cache", "named:/named"]
    assert host["DeviceRequests"] == [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
    assert host["RestartPolicy"] == {"Name": "unless-stopped"}
    assert spec["Labels"] == {
        "team": "ml",
        LABEL_MANAGED: "1",
        LABEL_NODE: "n1",
        LABEL_CONTAINER: "gpu",
    }
    assert container_name(container) == "jobnode-gpu-3007"

    # Host networking: the node tells the service where to listen; PORT cannot be overridden.
    host_settings = runtime_settings(
        [{"id": "h", "image": "i", "port": 3100, "env": {"PORT": 1, "MODE": "echo"}, "command": ["a", "b c"]}],
        node_id="n1",
    )
    host_spec = create_spec(host_settings, host_settings.containers[0])
    assert host_spec["Env"] == ["HOST=127.0.0.1", "PORT=3100", "MODE=echo"]
    assert host_spec["Cmd"] == ["a", "b c"]
    assert host_spec["HostConfig"]["NetworkMode"] == "host"
    assert "ExposedPorts" not in host_spec and "PortBindings" not in host_spec["HostConfig"]
    assert "Cmd" not in create_spec(settings, runtime_settings([{"id": "x", "image": "i"}], node_id="n").containers[0])

    # The spec hash changes with the settings and with the image id.
    base = spec_hash(spec, "sha256:a")
    assert spec_hash(create_spec(settings, container), "sha256:a") == base
    assert spec_hash(spec, "sha256:b") != base
    changed = runtime_settings(
        [{**msgspec_dict(container), "env": {"A": 2}}], node_id="n1", docker={"network_mode": "bridge"}
    )
    assert spec_hash(create_spec(changed, changed.containers[0]), "sha256:a") != base


def msgspec_dict(container) -> dict:
    import msgspec

    return msgspec.to_builtins(container)


def test_image_tag_for_builds() -> None:
    from app.containers.images import image_ref

    settings = runtime_settings(
        [{"id": "My Model", "build": "x"}, {"id": "b", "build": "x", "image": "acme/b:2"}], node_id="n"
    )
    assert image_ref(settings.containers[0]) == "jobnode/my-model:latest"
    assert image_ref(settings.containers[1]) == "acme/b:2"


async def test_stop_without_start_is_harmless(node_id: str) -> None:
    settings = runtime_settings([service("x")], node_id=node_id)
    runtime = ContainerRuntime(settings, ContainerStates(settings))
    await runtime.stop()
    await asyncio.sleep(0)
