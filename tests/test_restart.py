"""Jobs and results outlive the node process: SIGKILL it, start it again, read them back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.db.engine import Database
from tests.conftest import BACKENDS, STANDARD_CONFIG
from tests.helpers import finish, fresh_database, job, listed, other_address, results, submit, submit_batch
from tests.support import NodeProcess


@pytest.fixture(params=BACKENDS)
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


async def test_jobs_and_results_survive_a_sigkill(fresh_url, tmp_path, client_address):
    config = {**STANDARD_CONFIG, "manage_containers": False, "database": {"url": fresh_url}}
    process = NodeProcess(tmp_path, config)
    try:
        process.start()
        async with process.client(client_address) as http:
            ids = [await submit(http, job("echo", data={"n": 1}))]
            ids += [
                a["id"]
                for a in await submit_batch(http, [job("echo", "prover"), job("nope"), job("local")])
                if "id" in a
            ]
            ids.append(await submit(http))
            before = await results(http, *ids, intermediate="true")
        assert len(ids) == 4
        # A finished job too, written as the scheduler would have.
        database = Database(fresh_url)
        try:
            await finish(
                database,
                ids[1],
                "success",
                [{"container": "echo", "output": {"a": 1}}, {"container": "prover", "output": {"proof": "p"}}],
            )
        finally:
            await database.dispose()

        process.kill()
        process.start()

        async with process.client(client_address) as http:
            assert await listed(http) == ids
            assert await listed(http, pending="false") == [ids[1]]
            after = await results(http, *ids, intermediate="true")
            expected = [dict(body) for body in before]
            expected[1] = {
                "id": ids[1],
                "status": "success",
                "result": {"container": "prover", "output": {"proof": "p"}},
                "intermediate_results": [{"container": "echo", "output": {"a": 1}}],
            }
            assert after == expected
            # The restarted node takes new jobs after the old ones.
            ids.append(await submit(http))
            assert await listed(http) == ids
        async with process.client(other_address(client_address)) as other:
            assert await listed(other) == []
            assert await results(other, *ids) == []
    finally:
        process.kill()
