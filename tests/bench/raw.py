"""The raw rate: the same service, called directly at the same concurrency.

Each client POSTs ``/service_output`` with the body the node would send and checks the
echo; one call is one job's worth of container work (a chain of three makes three).
The ratio end-to-end jobs/s ÷ raw req/s is the figure the targets are set on.
"""

from __future__ import annotations

from typing import Any

from tests.bench.http import Connection
from tests.bench.load import Meter, closed_loop, raw_op
from tests.bench.procs import EchoService


async def measure_raw(
    service: EchoService, clients: int, *, warmup: float, duration: float, max_ops: int
) -> dict[str, Any]:
    window = await closed_loop(
        lambda _i: Connection("127.0.0.1", service.port),
        clients,
        raw_op(),
        warmup=warmup,
        duration=duration,
        max_ops=max_ops,
        meter=Meter(service=service),
    )
    return window.summary()
