"""The processes the benchmark starts and the OS figures it reads about them.

Everything listens on loopback. CPU time comes from ``/proc/<pid>/stat`` (utime + stime
of the process, its live descendants and its reaped children), peak memory from
``VmHWM`` in ``/proc/<pid>/status``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from tests import support

ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PG_ADMIN_URL = support.PG_ADMIN_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


# -- /proc ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) of ``pid``; with ``children``, its reaped children too."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


_SWITCH_FIELDS = ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
PREEMPTIONS = ("nonvoluntary_ctxt_switches:",)


def context_switches(pid: int, fields: tuple[str, ...] = _SWITCH_FIELDS) -> int:
    """Context switches of all of ``pid``'s threads, voluntary (it slept) or not (0 once it
    has exited); only the involuntary ones (it was preempted) with ``fields=PREEMPTIONS``."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/status") as status:
                total += sum(int(line.split()[1]) for line in status if line.startswith(fields))
        except (OSError, ValueError, IndexError):
            continue
    return total


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (live ones, and reaped ones)."""
    return process_cpu(pid) + sum(process_cpu(child) for child in descendants(pid))


def peak_rss_mb(pid: int) -> float | None:
    """``VmHWM``: the process's peak resident set size, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def system_busy_cpu() -> float:
    """CPU seconds spent by everything on the machine (all cores, not idle, not iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


# -- the service ---------------------------------------------------------------------


class EchoService:
    """``tests/bench/echo.py`` as its own process."""

    def __init__(self, directory: Path, work_us: float = 0.0, delay_ms: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work_us, self.delay_ms = work_us, delay_ms
        self.log_path = directory / (f"echo-{work_us:g}us.log" if work_us else "echo.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EchoService:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "tests.bench.echo", "--port", str(self.port)),
                    *("--work-us", str(self.work_us), "--delay-ms", str(self.delay_ms)),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, self.process, 15, "echo service")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# -- the node ------------------------------------------------------------------------


def node_config(
    database_url: str,
    service_url: str,
    *,
    containers: int = 3,
    scheduler: bool = True,
    max_concurrent_jobs: int = 256,
    container_concurrency: int = 256,
    workers: int = 1,
) -> dict[str, Any]:
    """A node that calls the bench service as ``echo1``..``echoN`` (one chain of N uses them all)."""
    return {
        "server": {"host": "127.0.0.1", "rate_limit": None, "workers": workers},
        "database": {"url": database_url},
        "scheduler": {"enabled": scheduler, "max_concurrent_jobs": max_concurrent_jobs, "node_id": "bench"},
        "retention": {"finished_jobs_days": 0},
        "manage_containers": False,
        "containers": [
            {"id": f"echo{i}", "url": service_url, "concurrency": container_concurrency, "timeout": 60}
            for i in range(1, containers + 1)
        ],
    }


class NodeProcess:
    """``jobnode serve`` with a generated config, like ``tests.support.NodeProcess``."""

    def __init__(self, directory: Path, config: dict[str, Any], name: str = "node") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {**config, "server": {**config.get("server", {}), "port": self.port}}
        self.config_path = directory / f"{name}.json"
        self.config_path.write_text(json.dumps(self.config, indent=1))
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss_mb: float | None = None
        self.env: dict[str, str] = {}
        #: The checkout whose node runs (another one for a before/after comparison).
        self.tree = ROOT

    def start(self, timeout: float = 120.0) -> NodeProcess:
        env = {**os.environ, "PYTHONPATH": str(self.tree), **self.env}
        env.pop("JOBNODE_DATABASE_URL", None)
        env.pop("JOBNODE_PORT", None)
        with self.log_path.open("ab") as log:
            # ``python -m app.cli`` from the tree measured (``self.tree``): the code measured is
            # that tree's, whichever checkout the venv's ``jobnode`` script points at. ``-m``
            # puts the working directory first on ``sys.path``, ahead of ``PYTHONPATH``: a node
            # started in another tree would run that tree's ``app``.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tree,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}: {self.log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                s.settimeout(2)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"node did not become healthy in {timeout} s: {self.log()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful), SIGKILL after ``timeout``; records the peak RSS first."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.peak_rss_mb = peak_rss_mb(self.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(10)
        return self.process.returncode


# -- databases -----------------------------------------------------------------------


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def create_pg_database(prefix: str = "jobnode_bench", admin_url: str = PG_ADMIN_URL) -> str:
    return await support.create_pg_database(admin_url, prefix)


async def drop_pg_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    await support.drop_pg_database(url, admin_url)


async def pg_version(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


class PgBackends:
    """CPU of the PostgreSQL backends serving one database (from ``pg_stat_activity`` pids).

    Backends that exit between two readings take their CPU with them; the node keeps its
    pool open, so this undercounts little. Shared processes (WAL writer, checkpointer) are
    not counted.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = url.rsplit("/", 1)[1]
        self._seen: dict[int, float] = {}

    async def _pids(self) -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=5)
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self.name)
        finally:
            await conn.close()
        return [row["pid"] for row in rows]

    async def cpu(self) -> float:
        """Total CPU seconds of the backends seen so far (a backend gone keeps its last value)."""
        for pid in await self._pids():
            value = process_cpu(pid, children=False)
            if value or pid not in self._seen:
                self._seen[pid] = value
        return sum(self._seen.values())


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def json_dump(value: Any) -> str:
    return msgspec.json.encode(value).decode()
