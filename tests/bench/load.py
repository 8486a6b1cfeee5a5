"""The load generator: closed-loop clients on asyncio, bounded in count and in time.

A *client* is one keep-alive connection that does one thing after another: in the
end-to-end loop it POSTs ``/api/jobs``, then polls ``GET /api/jobs?id=…`` every
``poll_interval`` (1 ms by default) until the job left ``running``, checks the result and
starts again. Every run has a warm-up, then a measuring window that closes at
``duration`` seconds or after ``max_ops`` completed operations, whichever comes first;
clients then finish what they have in flight (bounded by ``op_timeout``) and stop.

Only operations that *finish* inside the window count, and the CPU counters are read
at the window's edges, so CPU per job is CPU in the window over jobs in the window.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tests.bench.http import Connection
from tests.bench.procs import EchoService, NodeProcess, PgBackends, system_busy_cpu, tree_cpu
from tests.bench.stats import ms, percentile

_decode = msgspec.json.decode
_encode = msgspec.json.encode


@dataclass(slots=True)
class Sample:
    """One finished operation: a job (submit → result), a raw call, a batch."""

    end: float
    latency: float
    submit: float = 0.0
    polls: int = 0
    jobs: int = 1
    error: str | None = None


class OpFailed(Exception):
    pass


def count_locked(errors: Counter[str]) -> int:
    """Errors that say "database is locked" (SQLite's busy error leaking to a client)."""
    return sum(n for text, n in errors.items() if "locked" in text.lower())


def count_unavailable(errors: Counter[str]) -> int:
    """503 answers (``Database unavailable``)."""
    return sum(n for text, n in errors.items() if " 503:" in text)


# -- CPU meter -------------------------------------------------------------------------

#: The node's context switches in ``Window.cpu``: a count, not CPU seconds; and those of
#: them that were preemptions (the process was runnable, another took its core).
SWITCHES = "node_switches"
PREEMPTED = "node_preempted"
#: Each count, and the method of the node that reads it where the node counts it.
COUNTS = {SWITCHES: "switches", PREEMPTED: "preemptions"}


class Meter:
    """Reads the CPU counters of every party at a window's edges, and the node's context
    switches where it counts them (``switches()``: how often its processes slept or were
    preempted; ``preemptions()``: how often they were preempted)."""

    def __init__(
        self, node: NodeProcess | None = None, service: EchoService | None = None, db: PgBackends | None = None
    ) -> None:
        self.node, self.service, self.db = node, service, db

    async def read(self) -> dict[str, float]:
        times = os.times()
        return {
            "t": time.monotonic(),
            "node": self.node.cpu() if self.node else 0.0,
            **{key: float(getattr(self.node, name)()) for key, name in COUNTS.items() if hasattr(self.node, name)},
            "service": tree_cpu(self.service.pid) if self.service else 0.0,
            **({"db": await self.db.cpu()} if self.db else {}),
            "loadgen": times.user + times.system,
            "system": system_busy_cpu(),
        }

    @staticmethod
    def delta(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
        d = {key: end[key] - start[key] for key in start}
        d["other"] = d["system"] - sum(d.get(k, 0.0) for k in ("node", "service", "db", "loadgen"))
        d["wall"] = d.pop("t")
        return d


# -- the engine ------------------------------------------------------------------------


@dataclass
class Window:
    clients: int
    elapsed: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)
    started_ops: int = 0
    warmup: float = 0.0

    @property
    def jobs(self) -> int:
        return sum(s.jobs for s in self.samples if s.error is None)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def locked(self) -> int:
        return count_locked(self.errors)

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.error is None]
        latencies = [s.latency for s in ok]
        submits = [s.submit for s in ok if s.submit]
        jobs = self.jobs
        rate = jobs / self.elapsed if self.elapsed > 0 else 0.0
        cpu = {k: v for k, v in self.cpu.items() if k not in COUNTS}
        per_job = {
            f"{k}_cpu_ms_per_job": round(v / jobs * 1000, 4) if jobs else None for k, v in cpu.items() if k != "wall"
        }
        for key in COUNTS.keys() & self.cpu.keys():
            per_job[f"{key}_per_job"] = round(self.cpu[key] / jobs, 3) if jobs else None
        return {
            "clients": self.clients,
            "warmup_s": round(self.warmup, 2),
            "window_s": round(self.elapsed, 3),
            "ops": len(ok),
            "jobs": jobs,
            "rate": round(rate, 1),
            "latency_p50_ms": ms(percentile(latencies, 50)),
            "latency_p99_ms": ms(percentile(latencies, 99)),
            "submit_p50_ms": ms(percentile(submits, 50)),
            "submit_p99_ms": ms(percentile(submits, 99)),
            "polls_per_job": round(sum(s.polls for s in ok) / len(ok), 2) if ok else None,
            "errors": self.error_count,
            "database_locked_errors": self.locked,
            "error_samples": dict(self.errors.most_common(10)),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_cores": {k: round(v / self.elapsed, 2) for k, v in cpu.items() if k != "wall" and self.elapsed > 0},
            **per_job,
        }


Op = Callable[[Connection, int, int], Awaitable[Sample]]


async def closed_loop(
    connect: Callable[[int], Connection],
    clients: int,
    op: Op,
    *,
    warmup: float,
    duration: float,
    max_ops: int,
    meter: Meter,
    op_timeout: float = 60.0,
    warmup_max: float = 30.0,
) -> Window:
    """Run ``clients`` loops of ``op`` and measure the window after the warm-up.

    The warm-up lasts ``warmup`` seconds and, beyond that, until every client has finished
    one operation (a closed loop is in its steady state only then: on a slow node one
    job can take longer than a whole window), but never more than ``warmup_max``.
    """
    window = Window(clients)
    stopping = False
    full = asyncio.Event()
    counted = 0
    warmed: set[int] = set()  # clients that finished an operation
    edges: dict[str, float] = {"start": math.inf, "end": math.inf}
    sequence = 0

    async def client(index: int) -> None:
        nonlocal stopping, counted, sequence
        connection = connect(index)
        try:
            while not stopping:
                sequence += 1
                window.started_ops += 1
                try:
                    sample = await asyncio.wait_for(op(connection, index, sequence), op_timeout)
                except (OpFailed, OSError, TimeoutError, ConnectionError) as exc:
                    now = time.monotonic()
                    sample = Sample(now, 0.0, error=f"{type(exc).__name__}: {exc}"[:200])
                    connection.close()
                    await asyncio.sleep(0.01)
                warmed.add(index)
                if edges["start"] <= sample.end <= edges["end"]:
                    if sample.error is not None:
                        window.errors[sample.error] += 1
                    window.samples.append(sample)
                    counted += 1
                    if counted >= max_ops:
                        full.set()
        finally:
            connection.close()

    async def edge_keeper() -> None:
        nonlocal stopping
        began = time.monotonic()
        await asyncio.sleep(warmup)
        while len(warmed) < clients and time.monotonic() - began < warmup_max:
            await asyncio.sleep(0.05)
        window.warmup = time.monotonic() - began
        start = await meter.read()
        edges["start"] = start["t"]
        edges["end"] = math.inf
        try:
            await asyncio.wait_for(full.wait(), duration)
        except TimeoutError:
            pass
        end = await meter.read()
        edges["end"] = end["t"]
        stopping = True
        window.elapsed = end["t"] - start["t"]
        window.cpu = Meter.delta(start, end)

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    keeper = asyncio.create_task(edge_keeper())
    try:
        await keeper
        # In-flight operations finish (each bounded by op_timeout); they no longer count.
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), op_timeout + 5)
    finally:
        for task in tasks:
            task.cancel()
    return window


# -- operations ------------------------------------------------------------------------


def check_status(status: int, body: bytes, what: str) -> None:
    if status != 200:
        raise OpFailed(f"{what} {status}: {body[:160].decode(errors='replace')}")


async def submit_job(connection: Connection, containers: list[str], data: dict[str, Any]) -> str:
    status, body = await connection.request("POST", "/api/jobs", _encode({"containers": containers, "data": data}))
    check_status(status, body, "POST /api/jobs")
    return _decode(body)["id"]


#: End-to-end variants: result key → (how clients wait for a result, node processes).
#: "poll": ``GET /api/jobs?id=`` every ``--poll-ms`` (what Infernet clients do); "wait":
#: ``GET /api/jobs?id=…&wait=30`` (one request per result).
VARIANTS: dict[str, tuple[str, int]] = {
    "end_to_end": ("poll", 1),
    "end_to_end_wait": ("wait", 1),
    "end_to_end_workers": ("poll", 2),
    "end_to_end_wait_workers": ("wait", 2),
}

#: How long one waiting read may wait (``GET /api/jobs?id=…&wait=``).
WAIT_SECONDS = 30


async def wait_result(connection: Connection, job_id: str, poll_interval: float | None) -> tuple[dict[str, Any], int]:
    """Poll ``GET /api/jobs?id=`` every ``poll_interval`` seconds until the job is no longer
    running, or (``None``) wait on it with ``&wait=``; (result, requests)."""
    polls = 0
    target = f"/api/jobs?id={job_id}" + (f"&wait={WAIT_SECONDS}" if poll_interval is None else "")
    while True:
        status, body = await connection.request("GET", target)
        polls += 1
        check_status(status, body, "GET /api/jobs")
        results = _decode(body)
        if not results:
            raise OpFailed(f"job {job_id} not found")
        if results[0]["status"] != "running":
            return results[0], polls
        if poll_interval is not None:
            await asyncio.sleep(poll_interval)


def check_echo(result: dict[str, Any], data: dict[str, Any]) -> None:
    if result["status"] != "success":
        raise OpFailed(f"job {result['status']}: {str(result.get('result'))[:160]}")
    output = (result.get("result") or {}).get("output")
    if output != data:
        raise OpFailed(f"wrong output: {str(output)[:160]}")


def end_to_end_op(containers: list[str], poll_interval: float | None, size: int = 0) -> Op:
    """Submit a job, read its result (polling every ``poll_interval``, or waiting when None),
    check the echo. ``size``: pad the job's ``data`` to about that many bytes."""
    pad = {"pad": "x" * (size - 40)} if size > 40 else {}

    async def op(connection: Connection, client: int, sequence: int) -> Sample:
        data = {"job": sequence, "client": client, **pad}
        started = time.monotonic()
        job_id = await submit_job(connection, containers, data)
        submitted = time.monotonic()
        result, polls = await wait_result(connection, job_id, poll_interval)
        check_echo(result, data)
        end = time.monotonic()
        return Sample(end, end - started, submitted - started, polls)

    return op


def raw_op() -> Op:
    """The same service called directly: one ``POST /service_output`` is one job's worth."""

    async def op(connection: Connection, client: int, sequence: int) -> Sample:
        data = {"job": sequence, "client": client}
        body = _encode({"source": 1, "destination": 1, "data": data, "requires_proof": False})
        started = time.monotonic()
        status, answer = await connection.request("POST", "/service_output", body)
        check_status(status, answer, "POST /service_output")
        if _decode(answer) != data:
            raise OpFailed("service answered with the wrong body")
        end = time.monotonic()
        return Sample(end, end - started)

    return op


def submit_op(containers: list[str]) -> Op:
    """Single POSTs, not waiting for the result."""

    async def op(connection: Connection, client: int, sequence: int) -> Sample:
        started = time.monotonic()
        await submit_job(connection, containers, {"job": sequence, "client": client})
        end = time.monotonic()
        return Sample(end, end - started, end - started)

    return op


def batch_op(containers: list[str], size: int) -> Op:
    async def op(connection: Connection, client: int, sequence: int) -> Sample:
        items = [{"containers": containers, "data": {"job": sequence, "item": i}} for i in range(size)]
        started = time.monotonic()
        status, body = await connection.request("POST", "/api/jobs/batch", _encode(items))
        check_status(status, body, "POST /api/jobs/batch")
        answers = _decode(body)
        bad = [a for a in answers if "id" not in a]
        if len(answers) != size or bad:
            raise OpFailed(f"batch answered {len(answers)} items, {len(bad)} errors: {str(bad[:1])[:120]}")
        end = time.monotonic()
        return Sample(end, end - started, end - started, jobs=size)

    return op


# -- sequential measurements -------------------------------------------------------------


async def sequential(
    connection: Connection,
    op: Callable[[int], Awaitable[float]],
    *,
    count: int,
    time_limit: float,
    pause: float = 0.0,
    warmup: int = 3,
) -> dict[str, Any]:
    """One request (or job) at a time: latency p50/p99 over up to ``count`` in ``time_limit``."""
    for i in range(warmup):
        await op(-1 - i)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + time_limit
    for i in range(count):
        if time.monotonic() > deadline:
            break
        try:
            latencies.append(await asyncio.wait_for(op(i), 60))
        except (OpFailed, OSError, TimeoutError, ConnectionError) as exc:
            errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
            connection.close()
        if pause:
            await asyncio.sleep(pause)
    return {
        "count": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies) if latencies else None),
        "errors": sum(errors.values()),
        "error_samples": dict(errors.most_common(10)),
    }


async def time_to_result(
    connection: Connection,
    containers: list[str],
    poll_interval: float | None,
    *,
    count: int,
    time_limit: float,
    pause: float,
) -> dict[str, Any]:
    """Submit → result on an idle node, one job at a time, ``pause`` seconds apart: from
    before the POST to the answer that shows the job ended."""

    async def one(i: int) -> float:
        data = {"idle": i}
        started = time.perf_counter()
        job_id = await submit_job(connection, containers, data)
        result, _ = await wait_result(connection, job_id, poll_interval)
        check_echo(result, data)
        return time.perf_counter() - started

    return await sequential(connection, one, count=count, time_limit=time_limit, pause=pause)


async def single_post_latency(
    connection: Connection, containers: list[str], *, count: int, time_limit: float
) -> dict[str, Any]:
    async def one(i: int) -> float:
        started = time.monotonic()
        await submit_job(connection, containers, {"single": i})
        return time.monotonic() - started

    return await sequential(connection, one, count=count, time_limit=time_limit)


async def get_latency(
    connection: Connection,
    targets: Callable[[int], str],
    *,
    count: int,
    time_limit: float,
    check: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """``GET`` latency; ``targets(i)`` names the request, ``check`` validates the decoded body."""
    sizes: list[int] = []

    async def one(i: int) -> float:
        started = time.monotonic()
        status, body = await connection.request("GET", targets(i))
        elapsed = time.monotonic() - started
        check_status(status, body, f"GET {targets(i)[:60]}")
        if check is not None:
            check(_decode(body))
        sizes.append(len(body))
        return elapsed

    result = await sequential(connection, one, count=count, time_limit=time_limit)
    result["body_bytes"] = max(sizes) if sizes else None
    return result


async def wait_idle(connection: Connection, time_limit: float) -> bool:
    """Until ``/info`` shows no unfinished job (bounded)."""
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline:
        status, body = await connection.request("GET", "/info")
        if status == 200:
            pending = _decode(body)["pending"]
            if pending["offchain"] + pending["onchain"] == 0:
                return True
        await asyncio.sleep(0.05)
    return False
