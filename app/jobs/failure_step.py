"""The error step of a job that ends without a container error (cancelled, reaped, given
up after a restart): it ends on the step of the container it had reached, so its result
reads like any other failure."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.statements.maintenance import FAILURE_STEP, STEP_COUNT


async def record_failure(
    conn: AsyncConnection, job_id: str, containers: list[str], reason: str, now: datetime, node: str
) -> None:
    """In the caller's transaction, which ends the job. ``node``: the one recording it."""
    steps: int = (await STEP_COUNT.run(conn, {"job": job_id})).scalar_one()
    position = min(steps, len(containers) - 1)
    await FAILURE_STEP.run(
        conn,
        {
            "job": job_id,
            "step": position,
            "container_id": containers[position],
            "reason": reason,
            "by_node": node,
            "now": now,
        },
    )
