"""The built wheel is a working node (SPEC §11): installed in a fresh venv (not editable,
not this checkout), run from an empty directory, it migrates, serves and answers the
CLI on SQLite and PostgreSQL. Migrations and everything else come from the package."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.db import migrate
from tests.conftest import BACKENDS
from tests.helpers import fresh_database
from tests.support import free_port

# On one pytest-xdist worker: the module's wheel is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from: the package, its migrations (app/_migrations links to
#: migrations/) and the project metadata; copied so that the build leaves the tree clean.
SOURCES = ["app", "migrations", "pyproject.toml", "README.md"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bin/`` of a fresh venv with only the wheel (and its dependencies) in it."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (work / "dist").glob("jobnode-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=120)
    bin_dir = work / "venv" / "bin"
    subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", "--no-compile", str(wheel)],
        check=True,
        timeout=600,
    )
    return bin_dir


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "empty"
    directory.mkdir()
    return directory


def jobnode(bin_dir: Path, cwd: Path, url: str, *args: str) -> str:
    done = subprocess.run(
        [str(bin_dir / "jobnode"), *args], cwd=cwd, env=_env(url), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _env(url: str, **extra: str) -> dict[str, str]:
    """Nothing of this checkout: no PYTHONPATH, no JOBNODE_* of the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBNODE_", "PYTHON"))}
    return {**env, "JOBNODE_DATABASE_URL": url, **extra}


def test_the_wheel_carries_its_migrations(installed: Path, empty_dir: Path) -> None:
    done = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import app, app.db.migrate as m; print(app.__file__); "
            "print(m.alembic_config().get_main_option('script_location'))",
        ],
        cwd=empty_dir,
        env=_env("sqlite+aiosqlite:///unused.db"),
        capture_output=True,
        text=True,
        check=True,
    )
    module, location = done.stdout.split()
    venv = str(installed.parent)
    assert module.startswith(venv) and location.startswith(venv), done.stdout
    assert Path(location, "versions").is_dir()


@pytest.mark.parametrize("backend", BACKENDS)
def test_wheel_migrates_serves_and_answers_the_cli(installed: Path, empty_dir: Path, backend: str) -> None:
    async def run() -> None:
        async with fresh_database(backend, empty_dir) as url:
            await asyncio.to_thread(_exercise, installed, empty_dir, url)

    asyncio.run(run())


def _exercise(bin_dir: Path, cwd: Path, url: str) -> None:
    head = migrate.head_revision()
    assert jobnode(bin_dir, cwd, url, "db", "upgrade").strip() == f"database at revision {head}"
    assert f"database: {head}  code head: {head}" in jobnode(bin_dir, cwd, url, "db", "current")
    port = free_port()
    log = (cwd / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(bin_dir / "jobnode"), "serve"],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(url, JOBNODE_PORT=str(port)),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (cwd / "serve.log").read_text()
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (cwd / "serve.log").read_text()
                time.sleep(0.1)
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json() == {"status": "healthy"}
        assert "no jobs" in jobnode(bin_dir, cwd, url, "jobs", "list")
        assert "queue depth" in jobnode(bin_dir, cwd, url, "stats")
    finally:
        process.terminate()
        assert process.wait(30) == 0, (cwd / "serve.log").read_text()
    assert list(cwd.iterdir()) == [cwd / "serve.log"] or "sqlite" in url  # nothing written beside the log


def test_bench_from_the_wheel_says_where_it_runs(installed: Path, empty_dir: Path) -> None:
    """The benchmark measures a checkout's node and is not in the package: from the wheel,
    ``jobnode bench`` says so in one line, with what to install, and no traceback."""
    done = subprocess.run(
        [str(installed / "jobnode"), "bench", "--help"],
        cwd=empty_dir,
        env=_env("sqlite+aiosqlite:///unused.db"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("Error: the benchmark runs from a source checkout (tests/bench)"), done.stderr
    assert "pip install -e '.[bench]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
