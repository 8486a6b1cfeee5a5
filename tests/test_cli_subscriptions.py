"""``jobnode subscriptions list|show|cancel`` against the database straight, on SQLite and
PostgreSQL: any client's subscriptions, as the operator sees them."""

from __future__ import annotations

import json
import time

from app.clock import utcnow
from app.db.direct import wrap
from app.db.signal import JobSignal
from app.db.statements.subscriptions import INSERT_SUBSCRIPTIONS
from app.jobs.requests import JobRequest
from app.jobs.schedule import Schedule
from app.jobs.subscriptions import new_subscription_row
from app.maintenance.ticker import tick_due
from tests.test_cli_jobs import cli, config_path, database, fresh_url  # noqa: F401  (fixtures)

REQUEST = JobRequest(containers=["echo"], data={})


async def test_list_show_cancel(database, config_path):
    now = int(time.time())
    running = new_subscription_row(REQUEST, Schedule(60, 10, now - 150), "10.0.0.1", utcnow())
    later = new_subscription_row(REQUEST, Schedule(0, 1, now + 3600), "10.0.0.2", utcnow())
    async with database.write() as conn:
        await wrap(conn).insert_many(INSERT_SUBSCRIPTIONS, [running, later])
    await tick_due(database, JobSignal())  # interval 3 runs, 1 and 2 missed

    listed = json.loads((await cli("subscriptions", "list", "--config", config_path, "--json")).stdout)
    assert [(s["id"], s["client"], s["status"], s["missed"]) for s in listed] == [
        (later["id"], "10.0.0.2", "active", 0),
        (running["id"], "10.0.0.1", "active", 2),
    ]
    table = (await cli("subscriptions", "list", "--config", config_path)).stdout
    assert later["id"] in table and "MISSED" in table

    shown = (await cli("subscriptions", "show", running["id"], "--config", config_path)).stdout
    assert "10.0.0.1" in shown and "1 started" in shown and "missed" in shown
    doc = json.loads((await cli("subscriptions", "show", later["id"], "--config", config_path, "--json")).stdout)
    assert (doc["client"], doc["next_interval"], doc["next_at"]) == ("10.0.0.2", 1, now + 3600)

    done = await cli("subscriptions", "cancel", later["id"], "--config", config_path)
    assert done.stdout == f"{later['id']}: cancelled\n"
    active = json.loads((await cli("subscriptions", "list", "--active", "--config", config_path, "--json")).stdout)
    assert [s["id"] for s in active] == [running["id"]]

    missing = await cli(
        "subscriptions", "show", "00000000-0000-4000-8000-000000000000", "--config", config_path, ok=False
    )
    assert missing.exit_code == 1 and "Subscription not found" in missing.stderr
