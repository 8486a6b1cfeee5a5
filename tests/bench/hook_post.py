"""The CPU of one webhook POST alone, aiohttp's client against the node's lean one
(``app.maintenance.webhook_http``), to the benchmark's receiver in a process of its own:

    python -m tests.bench.hook_post            # 10,000 signed POSTs, 32 at once, each way, twice

No node and no database: what a delivery's POST costs the node's process, in CPU time
per POST (``time.process_time``), alternately through each client.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

from app.config.settings import WebhookSettings
from app.maintenance.webhook_http import WebhookClient
from tests.bench.hooks import Receiver

BODY = msgspec.json.encode(
    {"id": str(uuid.uuid4()), "status": "finished", "result": {"container": "echo1", "output": {"n": 1}}}
)


async def _run(url: str, posts: int, lean: bool) -> float:
    """CPU milliseconds per POST."""
    settings = WebhookSettings(allowed_hosts=["127.0.0.1"], secret="bench", timeout=10.0, concurrency=32)
    client = WebhookClient(settings)
    if not lean:
        client._route = lambda _url: (None, None)  # type: ignore[method-assign]  # allowed, aiohttp's
    slots = asyncio.Semaphore(32)

    async def one() -> None:
        async with slots:
            answer = await client.post(url, str(uuid.uuid4()), 1, BODY)
            if not answer.delivered:
                raise RuntimeError(f"not delivered: {answer}")

    try:
        await asyncio.gather(*(one() for _ in range(200)))  # connections opened, code warm
        started = time.process_time()
        await asyncio.gather(*(one() for _ in range(posts)))
        return (time.process_time() - started) / posts * 1000
    finally:
        await client.close()


async def main(posts: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        receiver = await Receiver(Path(directory)).start()
        try:
            for _ in range(2):
                for lean in (False, True):
                    cpu = await _run(receiver.url, posts, lean)
                    print(f"{'lean http11' if lean else 'aiohttp'}: {cpu:.3f} ms of CPU per POST", flush=True)
        finally:
            await receiver.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().posts))
