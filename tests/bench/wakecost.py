"""What this machine charges a process for sleeping and being woken (issue 19, item 5).

A node's CPU per job depends on how often it sleeps per job: a process at half load waits
for its next request, answer or result more often per job than one at full load, which
finds the next one ready. How much each sleep costs is the machine's: this measures it,
with nothing of jobnode's.

- *Ping-pong*: two processes hand one byte back and forth over pipes, each sleeping in
  ``read`` until the other answers: the CPU each is charged per round trip (user and
  system, from ``resource.getrusage``) when both are pinned to one CPU, and when each has
  its own (the sleeper's CPU then idles, and the waker wakes it across CPUs).
- *Work after a sleep*: the same piece of Python work (JSON out and in, about what a
  node does for a request) run back to back, and after the process slept 50 µs or 1 ms:
  the CPU of the work alone (``time.thread_time_ns`` around it). Work after a sleep finds
  the CPU's caches and predictors taken over by whatever ran meanwhile.
- *Work beside a busy CPU*: the same piece of work back to back on one CPU while the other
  idles, and while another process runs the same work on it, alternately (``--trials``
  pairs): the CPU of the work alone, each pair's ratio. Where the two CPUs share a core or
  its caches underneath (a virtual machine's two CPUs may), a process pays more for the
  same work the busier the other CPU is: two node processes keep both busy more than one.

    python -m tests.bench.wakecost [--round-trips 100000] [--work 20000] [--trials 8]

Prints one JSON document (µs). Needs Linux and 2 CPUs for the cross-CPU figures.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import statistics
import time
from typing import Any

import click

#: The sleeps before each piece of work, in µs (0: back to back).
SLEEPS_US = (0, 50, 1000)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _ping_pong(round_trips: int, same_cpu: bool) -> dict[str, float]:
    """CPU per round trip of each side, and its wall time, in µs."""
    there, back = os.pipe(), os.pipe()
    mine = os.sched_getaffinity(0)
    first = min(mine)
    second = first if same_cpu else max(mine)
    os.sched_setaffinity(0, {first})
    try:
        began, wall = _cpu(resource.RUSAGE_SELF), time.perf_counter()
        children_before = _cpu(resource.RUSAGE_CHILDREN)
        pid = os.fork()
        if pid == 0:  # the echoing side
            try:
                os.sched_setaffinity(0, {second})
                for _ in range(round_trips):
                    os.write(back[1], os.read(there[0], 1))
            finally:
                os._exit(0)
        for _ in range(round_trips):
            os.write(there[1], b"x")
            os.read(back[0], 1)
        os.waitpid(pid, 0)
        wall = time.perf_counter() - wall
        parent = _cpu(resource.RUSAGE_SELF) - began
        child = _cpu(resource.RUSAGE_CHILDREN) - children_before
    finally:
        os.sched_setaffinity(0, mine)
        for fd in (*there, *back):
            os.close(fd)
    scale = 1e6 / round_trips
    return {
        "waker_cpu_us": round(parent * scale, 2),
        "echo_cpu_us": round(child * scale, 2),
        "wall_us": round(wall * scale, 2),
    }


def _work() -> None:
    document = {"id": "0" * 36, "containers": ["echo1"], "data": {"values": list(range(20))}}
    for _ in range(8):
        document = json.loads(json.dumps(document))


def _work_after_sleep(pieces: int, sleep_us: int) -> float:
    """The median CPU (µs) of one piece of work, each after sleeping ``sleep_us``."""
    spent: list[int] = []
    for _ in range(pieces):
        if sleep_us:
            select.select([], [], [], sleep_us / 1e6)
        began = time.thread_time_ns()
        _work()
        spent.append(time.thread_time_ns() - began)
    return round(statistics.median(spent) / 1000, 2)


def _work_beside(pieces: int, trials: int) -> dict[str, Any]:
    """The median CPU (µs) of one piece of work with the other CPU idle, and with a process
    working on it, ``trials`` times each, alternately (the machine's speed drifts)."""
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mine)})
    idle: list[float] = []
    busy: list[float] = []
    try:
        for _ in range(trials):
            idle.append(_work_after_sleep(pieces, 0))
            pid = os.fork()
            if pid == 0:  # the neighbour: the same work, on the other CPU, until killed
                os.sched_setaffinity(0, {max(mine)})
                while True:
                    _work()
            try:
                time.sleep(0.05)
                busy.append(_work_after_sleep(pieces, 0))
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    finally:
        os.sched_setaffinity(0, mine)
    return {
        "other_cpu_idle": round(statistics.median(idle), 2),
        "other_cpu_busy": round(statistics.median(busy), 2),
        "busy_over_idle_by_trial": [round(b / i, 2) for i, b in zip(idle, busy, strict=True)],
    }


def measure(round_trips: int, pieces: int, trials: int = 8) -> dict[str, Any]:
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "ping_pong_same_cpu": _ping_pong(round_trips, same_cpu=True),
        "ping_pong_across_cpus": _ping_pong(round_trips, same_cpu=False) if two_cpus else None,
        "work_cpu_us_after_sleep": {f"{sleep}us": _work_after_sleep(pieces, sleep) for sleep in SLEEPS_US},
        "work_cpu_us_beside": _work_beside(pieces, trials) if two_cpus else None,
    }


@click.command()
@click.option("--round-trips", type=click.IntRange(100), default=100_000, show_default=True)
@click.option("--work", "pieces", type=click.IntRange(100), default=20_000, show_default=True)
@click.option("--trials", type=click.IntRange(1), default=8, show_default=True)
def main(round_trips: int, pieces: int, trials: int) -> None:
    """What a sleep and a wake-up, and a busy neighbour, cost a process on this machine."""
    click.echo(json.dumps(measure(round_trips, pieces, trials)))


if __name__ == "__main__":
    main()
