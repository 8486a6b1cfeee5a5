"""One benchmark run: for each database, every phase in order, then the report.

Per database:
 1. the echo service alone at 1/32/128 clients (raw rate);
 2. a node (``jobnode serve``, scheduler on) on a fresh database: end to end for chains
    of one and three containers at 1/32/128 clients; a profiled repeat of one container
    at 32 clients; idle submit → result; single POSTs (one client, then 32); batches;
 3. an API-only node (scheduler off) on the same database: single POSTs and batches;
 4. a dedicated database with N jobs stored: read latencies and the claim query's plan.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from app.db.engine import Database
from tests.bench import burst, load, profile, report, stored, wakecost
from tests.bench.http import Connection
from tests.bench.procs import (
    ROOT,
    EchoService,
    NodeProcess,
    PgBackends,
    asyncpg_dsn,
    create_pg_database,
    drop_pg_database,
    node_config,
    pg_version,
    sqlite_url,
)
from tests.bench.raw import measure_raw
from tests.support import migrated

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    databases: list[str]
    quick: bool = False
    stored_jobs: int = 10_000_000
    profile: bool = True
    results_dir: Path = DEFAULT_RESULTS
    keep_workdir: bool = False
    poll_ms: float = 1.0
    clients: tuple[int, ...] = (1, 32, 128)
    chains: tuple[int, ...] = (1, 3)
    warmup: float = 1.5
    warmup_max: float = 30.0
    duration: float = 5.0
    max_ops: int = 200_000
    raw_warmup: float = 1.0
    raw_duration: float = 3.0
    #: The service of the reference's speed (``tests/bench/echo.py --work-us``).
    reference_work_us: float = 250.0
    reference_clients: int = 32
    profile_duration: float = 8.0
    idle_jobs: int = 100
    #: Seconds between the idle phase's jobs: long enough for the machine to go idle, as
    #: it is when a client submits now and then (5 ms kept it warm: ~1.5 ms less).
    idle_pause: float = 0.2
    #: The burst phase (``tests/bench/burst.py``): jobs, from this many clients.
    burst_jobs: int = 4000
    burst_clients: int = 32
    single_posts: int = 1000
    submit_clients: int = 32
    batch_clients: int = 4
    batch_size: int = 1000
    ingest_duration: float = 4.0
    read_samples: int = 500
    read_time_limit: float = 15.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        databases: list[str],
        *,
        quick: bool,
        stored_jobs: int | None,
        profile: bool | None,
        results_dir: Path | None,
        **kw: Any,
    ) -> Options:
        options = cls(databases=databases, quick=quick, **kw)
        if quick:
            options.stored_jobs = 5_000
            options.profile = False
            options.clients = (1, 4)
            options.reference_clients = 4
            options.warmup, options.duration, options.max_ops = 0.2, 0.6, 2_000
            options.warmup_max = 5.0
            options.raw_warmup, options.raw_duration = 0.1, 0.3
            options.profile_duration = 1.0
            options.idle_jobs, options.idle_pause, options.single_posts = 20, 0.02, 50
            options.burst_jobs, options.burst_clients = 200, 4
            options.submit_clients, options.batch_clients, options.batch_size = 4, 2, 100
            options.ingest_duration = 2.0
            options.read_samples, options.read_time_limit = 20, 5.0
        if stored_jobs is not None:
            options.stored_jobs = stored_jobs
        if profile is not None:
            options.profile = profile
        if results_dir is not None:
            options.results_dir = results_dir
        return options


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def code_info() -> dict[str, Any]:
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "app_dirty": bool(_git("status", "--porcelain", "--", "app", "migrations")),
    }


async def _database_url(db: str, workdir: Path, name: str) -> str:
    if db == "postgresql":
        return await create_pg_database(f"jobnode_bench_{name}")
    return sqlite_url(workdir / f"{name}.db")


async def _drop(db: str, url: str) -> None:
    if db == "postgresql":
        await drop_pg_database(url)
    else:
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _vacuum_if_autovacuum_off(db: str, url: str) -> bool:
    """``VACUUM (ANALYZE)`` the database when the server's autovacuum is off (as on the CI
    machines): the phases that follow others on one database would otherwise run on every
    row version the earlier ones left dead (the burst after the closed loop: 0.18–0.21 ms of
    PostgreSQL CPU a job against 0.11–0.12 once vacuumed), which a server with autovacuum on
    would have cleaned in the meantime. Returns whether it did."""
    if db != "postgresql":
        return False
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        if await conn.fetchval("SELECT current_setting('autovacuum')") == "on":
            return False
        await conn.execute("VACUUM (ANALYZE)")
        return True
    finally:
        await conn.close()


def _log_count(node: NodeProcess, needle: str) -> int:
    return node.log().lower().count(needle.lower())


class DatabaseRun:
    def __init__(self, db: str, options: Options, workdir: Path) -> None:
        self.db, self.o, self.workdir = db, options, workdir
        self.result: dict[str, Any] = {"db": db, "mode": "quick" if options.quick else "full"}
        self.windows: list[load.Window] = []
        self.sequential_errors: Counter[str] = Counter()
        self.nodes: list[NodeProcess] = []

    def _window(self, window: load.Window) -> dict[str, Any]:
        self.windows.append(window)
        return window.summary()

    async def run(self) -> dict[str, Any]:
        o = self.o
        started = time.monotonic()
        self.result.update(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            code=code_info(),
            machine={
                "cpus": os.cpu_count(),
                "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "python": platform.python_version(),
                "kernel": platform.release(),
                # Runs on machines of one kind differ by half: what a wake-up across CPUs and
                # a piece of Python work cost here, to compare one report with another.
                "wakecost": wakecost.measure(*((2_000, 200) if o.quick else (20_000, 1_000))),
            },
            config={
                "poll_ms": o.poll_ms,
                "warmup_s": o.warmup,
                "duration_s": o.duration,
                "max_ops": o.max_ops,
                "clients": list(o.clients),
                "batch_size": o.batch_size,
                "stored_jobs": o.stored_jobs,
                "max_concurrent_jobs": 256,
                "container_concurrency": 256,
                "burst": {
                    "jobs": o.burst_jobs,
                    "clients": o.burst_clients,
                    "max_concurrent_jobs": burst.MAX_CONCURRENT_JOBS,
                },
            },
        )
        service = EchoService(self.workdir).start()
        try:
            await self._raw(service)
            await self._node_phases(service)
            await self._reference()
            if o.stored_jobs > 0:
                await self._stored(service)
        finally:
            service.stop()
            for node in self.nodes:
                node.stop()
        errors: Counter[str] = Counter()
        for window in self.windows:
            errors.update(window.errors)
        errors.update(self.sequential_errors)
        self.result["checks"] = {
            "client_errors": sum(errors.values()),
            "database_locked_to_clients": load.count_locked(errors),
            "database_unavailable_to_clients": load.count_unavailable(errors),
            "error_samples": dict(errors.most_common(10)),
            "database_locked_in_logs": sum(_log_count(n, "database is locked") for n in self.nodes),
            "tracebacks_in_logs": sum(_log_count(n, "Traceback") for n in self.nodes),
            # Nothing cancels or takes over a job here: any abandoned job is a fault.
            "jobs_abandoned_in_logs": sum(_log_count(n, "job abandoned") for n in self.nodes),
        }
        if self.o.keep_workdir:
            self.result["checks"]["node_logs"] = [str(n.log_path) for n in self.nodes]
        self.result["elapsed_s"] = round(time.monotonic() - started, 1)
        self.result["targets"] = report.evaluate_targets(self.result)
        return self.result

    # -- 1. the raw service --------------------------------------------------------------
    async def _raw(self, service: EchoService) -> None:
        o = self.o
        self.result["raw"] = {}
        for clients in o.clients:
            summary = await measure_raw(
                service, clients, warmup=o.raw_warmup, duration=o.raw_duration, max_ops=o.max_ops * 4
            )
            self.result["raw"][str(clients)] = summary
            say(f"{self.db}: raw service, {clients} clients: {summary['rate']:,.0f} req/s")

    # -- 2./3. a node on a fresh database ------------------------------------------------
    async def _node_phases(self, service: EchoService) -> None:
        o = self.o
        url = await _database_url(self.db, self.workdir, "e2e")
        await migrated(url)
        try:
            if self.db == "postgresql":
                self.result["machine"]["database_version"] = f"PostgreSQL {await pg_version(url)}"
            else:
                self.result["machine"]["database_version"] = f"SQLite {sqlite3.sqlite_version}"
            node = self._node(url, service, "node", scheduler=True).start()
            meter = self._meter(node, service, url)
            control = Connection("127.0.0.1", node.port)
            try:
                await self._end_to_end(node, meter, control, workers=1)
                if o.profile:
                    await self._profile(node, meter, control)
                else:
                    self.result["profile"] = {"error": "not requested (--profile)"}
                await self._idle(node, control)
            finally:
                control.close()
                node.stop()
            await self._settle(url)
            await self._burst(url, service)
            await self._settle(url)
            # Before the submit phases: they leave a backlog of pending jobs behind.
            workers = self._node(url, service, "workers", scheduler=True, workers=2).start()
            control = Connection("127.0.0.1", workers.port)
            try:
                meter = self._meter(workers, service, url)
                await self._end_to_end(workers, meter, control, workers=2)
            finally:
                control.close()
                workers.stop()
            memory = {"node_peak_rss_mb": node.peak_rss_mb}
            node = self._node(url, service, "node-submits", scheduler=True).start()
            try:
                meter = self._meter(node, service, url)
                await self._submits(node, meter, prefix="")
            finally:
                node.stop()
            memory["ingest_node_peak_rss_mb"] = node.peak_rss_mb
            api = self._node(url, service, "api-only", scheduler=False).start()
            try:
                meter = self._meter(api, service, url)
                await self._submits(api, meter, prefix="api_only_", concurrent=False)
            finally:
                api.stop()
            self.result["memory"] = {**memory, "api_only_node_peak_rss_mb": api.peak_rss_mb}
        finally:
            await _drop(self.db, url)

    async def _settle(self, url: str) -> None:
        """Between phases on one database: what autovacuum would have done meanwhile."""
        if await _vacuum_if_autovacuum_off(self.db, url):
            self.result["machine"]["autovacuum"] = "off: the bench vacuums before the burst and the phases after it"
            say(f"{self.db}: the server's autovacuum is off: VACUUM (ANALYZE) before the next phase")

    async def _burst(self, url: str, service: EchoService) -> None:
        """The burst phase and its waiting variant, on a node of its own (``max_concurrent_jobs``
        64, issue 19's workload) on the same database."""
        o = self.o
        node = NodeProcess(self.workdir, burst.config(url, service.url), name=f"burst-{self.db}")
        self.nodes.append(node)
        node.start()
        control = Connection("127.0.0.1", node.port)
        settings = burst.BurstSettings(clients=o.burst_clients, jobs=o.burst_jobs, poll_ms=o.poll_ms)
        raw = self.result["raw"].get(str(o.burst_clients), {}).get("rate")
        try:
            meter = self._meter(node, service, url)
            for key, mode in burst.VARIANTS.items():
                await load.wait_idle(control, 60)
                interval = o.poll_ms / 1000 if mode == "poll" else None
                summary = self.result[key] = await burst.run_burst(node.port, meter, settings, interval, raw)
                self._count_errors(summary)
                say(f"{self.db}: {burst.describe(key, summary)}")
        finally:
            control.close()
            node.stop()

    # -- 3b. a service of the reference's speed -------------------------------------------
    async def _reference(self) -> None:
        """The ratio to raw against a service that spends ``reference_work_us`` of CPU per
        call, as fast as the reference's echo service (issue 5: 3,000–4,300 req/s), on a
        fresh database. Against the no-work echo above (tens of thousands of calls per
        second) the ratio only says how far a durable node is from a bare socket."""
        o = self.o
        clients = o.reference_clients
        info: dict[str, Any] = {"work_us": o.reference_work_us, "clients": clients}
        self.result["reference"] = info
        service = EchoService(self.workdir, work_us=o.reference_work_us).start()
        url = await _database_url(self.db, self.workdir, "reference")
        try:
            await migrated(url)
            raw = await measure_raw(
                service, clients, warmup=o.raw_warmup, duration=o.raw_duration, max_ops=o.max_ops * 4
            )
            info["raw"] = raw
            say(
                f"{self.db}: reference-speed service ({o.reference_work_us:g} µs per call), {clients} clients: "
                f"{raw['rate']:,.0f} req/s"
            )
            node = self._node(url, service, "reference", scheduler=True).start()
            control = Connection("127.0.0.1", node.port)
            try:
                meter = self._meter(node, service, url)
                for key, (mode, processes) in load.VARIANTS.items():
                    if processes != 1:
                        continue
                    summary = info[key] = await self._e2e_window(
                        node, meter, ["echo1"], clients, self._poll_interval(mode), raw["rate"]
                    )
                    say(
                        f"{self.db}: {key} against the reference-speed service, {clients} clients: "
                        f"{summary['rate']:,.0f} jobs/s (ratio {summary['ratio_to_raw']}), node "
                        f"{summary['node_cpu_ms_per_job']} ms CPU/job, errors {summary['errors']}"
                    )
                    await load.wait_idle(control, 60)
            finally:
                control.close()
                node.stop()
        finally:
            service.stop()
            await _drop(self.db, url)

    def _node(self, url: str, service: EchoService, name: str, *, scheduler: bool, workers: int = 1) -> NodeProcess:
        config = node_config(url, service.url, containers=max(self.o.chains), scheduler=scheduler, workers=workers)
        node = NodeProcess(self.workdir, config, name=f"{name}-{self.db}")
        self.nodes.append(node)
        return node

    def _meter(self, node: NodeProcess, service: EchoService, url: str) -> load.Meter:
        return load.Meter(node, service, PgBackends(url) if self.db == "postgresql" else None)

    def _poll_interval(self, mode: str) -> float | None:
        """How clients of an end-to-end variant get their result: None waits (``&wait=``)."""
        return None if mode == "wait" else self.o.poll_ms / 1000

    async def _e2e_window(
        self,
        node: NodeProcess,
        meter: load.Meter,
        containers: list[str],
        clients: int,
        poll_interval: float | None,
        raw_rate: float | None,
    ) -> dict[str, Any]:
        """One end-to-end window: its summary, with the ratio to ``raw_rate``."""
        o = self.o
        window = await load.closed_loop(
            lambda _i: Connection("127.0.0.1", node.port),
            clients,
            load.end_to_end_op(containers, poll_interval),
            warmup=o.warmup,
            duration=o.duration,
            max_ops=o.max_ops,
            meter=meter,
            warmup_max=o.warmup_max,
        )
        summary = self._window(window)
        summary["ratio_to_raw"] = round(summary["rate"] / raw_rate, 4) if raw_rate else None
        return summary

    async def _end_to_end(self, node: NodeProcess, meter: load.Meter, control: Connection, workers: int) -> None:
        for key, (mode, processes) in load.VARIANTS.items():
            if processes == workers:
                await self._end_to_end_variant(node, meter, control, key, self._poll_interval(mode))

    async def _end_to_end_variant(
        self, node: NodeProcess, meter: load.Meter, control: Connection, key: str, poll_interval: float | None
    ) -> None:
        o = self.o
        self.result[key] = {}
        for chain in o.chains:
            containers = [f"echo{i}" for i in range(1, chain + 1)]
            by_clients: dict[str, Any] = {}
            for clients in o.clients:
                raw = self.result["raw"].get(str(clients), {}).get("rate")
                summary = await self._e2e_window(node, meter, containers, clients, poll_interval, raw)
                by_clients[str(clients)] = summary
                say(
                    f"{self.db}: {key} {chain} container(s), {clients} clients: {summary['rate']:,.0f} jobs/s "
                    f"(ratio {summary['ratio_to_raw']}), p50 {summary['latency_p50_ms']} ms, node "
                    f"{summary['node_cpu_ms_per_job']} ms CPU/job, errors {summary['errors']}"
                )
                if not await load.wait_idle(control, 60):
                    say(f"{self.db}: node still busy 60 s after the phase")
            self.result[key][str(chain)] = by_clients

    async def _profile(self, node: NodeProcess, meter: load.Meter, control: Connection) -> None:
        o = self.o
        self.o.results_dir.mkdir(parents=True, exist_ok=True)
        raw_path = o.results_dir / f"profile-{self.db}.txt"
        svg_path = o.results_dir / f"profile-{self.db}.svg"
        recorder = profile.Recorder(node.pid, raw_path, o.profile_duration)
        info: dict[str, Any] = {
            "tool": "py-spy record (--nonblocking, 200 Hz, idle threads excluded)",
            "duration_s": o.profile_duration,
            "clients": "wait",
        }

        async def loader() -> load.Window:
            return await load.closed_loop(
                lambda _i: Connection("127.0.0.1", node.port),
                32,
                load.end_to_end_op(["echo1"], None),
                warmup=0.3,
                duration=o.profile_duration,
                max_ops=o.max_ops * 10,
                meter=meter,
            )

        if not recorder.start():
            self.result["profile"] = {"error": recorder.error}
            say(f"{self.db}: no profile: {recorder.error}")
            return
        window = await loader()
        ok = await asyncio.to_thread(recorder.wait, o.profile_duration + 30)
        info["rate"] = round(window.summary()["rate"], 1)
        if not ok:
            info["error"] = recorder.error
            say(f"{self.db}: py-spy failed: {recorder.error}")
        else:
            info.update(profile.summarize(raw_path))
            size = profile.write_svg(raw_path, svg_path, f"jobnode node, {self.db}, 1 container, 32 clients")
            packed = profile.gzip_file(raw_path)  # collapsed stacks compress ~10×
            info["files"] = [packed.name, svg_path.name]
            info["svg_bytes"] = size
            top = info["top_own"][0] if info["top_own"] else {}
            say(
                f"{self.db}: profiled {info['samples']} samples; top own frame {top.get('frame')} {top.get('percent')}%"
            )
        self.result["profile"] = info
        await load.wait_idle(control, 60)

    async def _idle(self, node: NodeProcess, control: Connection) -> None:
        o = self.o
        await load.wait_idle(control, 60)
        await asyncio.sleep(0.5)
        connection = Connection("127.0.0.1", node.port)
        try:
            for key, poll_interval in (("idle_time_to_result", o.poll_ms / 1000), ("idle_time_to_result_wait", None)):
                result = await load.time_to_result(
                    connection, ["echo1"], poll_interval, count=o.idle_jobs, time_limit=60, pause=o.idle_pause
                )
                self.result[key] = {**result, "pause_ms": o.idle_pause * 1000}
                self._count_errors(result)
                say(f"{self.db}: {key} p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
        finally:
            connection.close()

    def _count_errors(self, result: dict[str, Any]) -> None:
        """Errors of a sequential measurement (its samples hold every distinct text, up to 10)."""
        samples = result.get("error_samples") or {}
        self.sequential_errors.update(samples)
        missing = result.get("errors", 0) - sum(samples.values())
        if missing > 0:
            self.sequential_errors["(other errors)"] += missing

    async def _submits(self, node: NodeProcess, meter: load.Meter, *, prefix: str, concurrent: bool = True) -> None:
        o = self.o
        submit = self.result.setdefault("submit", {})
        connection = Connection("127.0.0.1", node.port)
        try:
            single = await load.single_post_latency(connection, ["echo1"], count=o.single_posts, time_limit=10)
        finally:
            connection.close()
        submit[prefix + "single_sequential"] = single
        self._count_errors(single)
        say(f"{self.db}: {prefix}single POST p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms")
        if concurrent:
            window = await load.closed_loop(
                lambda _i: Connection("127.0.0.1", node.port),
                o.submit_clients,
                load.submit_op(["echo1"]),
                warmup=0.5,
                duration=o.ingest_duration,
                max_ops=o.max_ops,
                meter=meter,
            )
            submit[prefix + "single_concurrent"] = self._window(window)
            say(
                f"{self.db}: {prefix}single POSTs, {o.submit_clients} clients: "
                f"{submit[prefix + 'single_concurrent']['rate']:,.0f} jobs/s"
            )
        window = await load.closed_loop(
            lambda _i: Connection("127.0.0.1", node.port),
            o.batch_clients,
            load.batch_op(["echo1"], o.batch_size),
            warmup=0.5,
            duration=o.ingest_duration,
            max_ops=max(1, o.max_ops // o.batch_size),
            meter=meter,
        )
        submit[prefix + "batch"] = self._window(window)
        say(f"{self.db}: {prefix}batch ingest: {submit[prefix + 'batch']['rate']:,.0f} jobs/s")

    # -- 4. millions of jobs stored --------------------------------------------------------
    async def _stored(self, service: EchoService) -> None:
        o = self.o
        layout = stored.Layout.for_total(o.stored_jobs)
        url = await _database_url(self.db, self.workdir, "stored")
        info: dict[str, Any] = {"jobs": layout.total, "pending": layout.pending}
        self.result["stored"] = info
        try:
            await migrated(url)
            say(f"{self.db}: generating {layout.total:,} stored jobs")
            started = time.monotonic()
            if self.db == "postgresql":
                info["build"] = await stored.build_postgresql(url, layout, log=say)
            else:
                path = Path(url.split("///", 1)[1])
                info["build"] = await asyncio.to_thread(stored.build_sqlite, path, layout, say)
            info["build_s"] = round(time.monotonic() - started, 1)
            info["build"] = {k: round(v, 1) for k, v in info["build"].items()}
            say(f"{self.db}: {layout.total:,} jobs stored in {info['build_s']} s")
            database = Database(url)
            try:
                ids = await stored.big_client_ids(database)
                async with database.read() as conn:
                    from sqlalchemy import text

                    info["client_pending"] = (
                        await conn.execute(
                            text("SELECT count(*) FROM jobs WHERE client = :c AND status IN ('pending', 'running')"),
                            {"c": stored.BIG_CLIENT},
                        )
                    ).scalar()
            finally:
                await database.dispose()
            info["client_jobs"] = len(ids)
            config = node_config(url, service.url, containers=1, scheduler=False)
            node = NodeProcess(self.workdir, config, name=f"stored-{self.db}")
            self.nodes.append(node)
            node.start()
            try:
                info["reads"] = await stored.measure_reads(
                    node, ids, layout, samples=o.read_samples, time_limit=o.read_time_limit
                )
            finally:
                node.stop()
            for key, r in info["reads"].items():
                self._count_errors(r)
                say(f"{self.db}: stored {key}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({r['count']} requests)")
            self.result.setdefault("memory", {})["stored_node_peak_rss_mb"] = node.peak_rss_mb
            info["claim_plan"] = await stored.explain_claim(url)
            plan = info["claim_plan"]
            say(
                f"{self.db}: claim query uses {stored.CLAIM_INDEX}: {plan['uses_index']}, as an ordered scan: "
                f"{plan['ordered_index_scan']} (indexes: {', '.join(plan['indexes_used'])}; "
                f"execution {plan['execution_ms']} ms)"
            )
        finally:
            await _drop(self.db, url)


async def run(options: Options) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="jobnode-bench-"))
    # One report per database, replaced by each run (its date and commit are inside; git keeps
    # the history): the results directory holds the latest run, not one file per run.
    stamp = "latest-quick" if options.quick else "latest"
    started = time.monotonic()
    say(f"work directory {workdir}; results to {options.results_dir}")
    try:
        for db in options.databases:
            say(f"=== {db} ===")
            result = await DatabaseRun(db, options, workdir).run()
            md, js = report.write(result, options.results_dir, f"{stamp}-{db}")
            results[db] = result
            print(report.markdown(result), flush=True)
            say(f"{db}: wrote {md} and {js.name}")
        if "postgresql" in results and "sqlite" in results:
            path = options.results_dir / f"{stamp}-comparison.md"
            path.write_text(report.comparison(results))
            print(path.read_text(), flush=True)
    finally:
        if options.keep_workdir:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"benchmark finished in {time.monotonic() - started:.0f} s")
    return results
