"""Counts the Python calls a node process makes between two signals (``twonodes.py
--count-calls``): put on a node's ``PYTHONPATH``, with ``JOBNODE_BENCH_CALLS`` naming where
each process writes its count.

SIGUSR1 starts ``cProfile`` in the process's main thread (the event loop's); SIGUSR2 stops
it and writes the calls it saw as one number to ``<JOBNODE_BENCH_CALLS>.<pid>``. A count of
calls, not of time: cProfile makes each call dearer, but not more numerous, so the calls a
job takes compare across loads where CPU time cannot say whether a process did more work or
did the same work slower.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import signal
from types import FrameType

_OUTPUT = os.environ.get("JOBNODE_BENCH_CALLS")

if _OUTPUT:
    _profile = cProfile.Profile()

    def _start(signum: int, frame: FrameType | None) -> None:
        _profile.enable()

    def _stop(signum: int, frame: FrameType | None) -> None:
        _profile.disable()
        calls = pstats.Stats(_profile).total_calls  # type: ignore[attr-defined]
        with open(f"{_OUTPUT}.{os.getpid()}", "w") as out:
            out.write(str(calls))
        _profile.clear()  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
