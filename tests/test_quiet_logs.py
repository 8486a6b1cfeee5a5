"""Logs carry no job inputs or outputs, and clients do not control their volume:
repeated identical lines are held back (``app.logging.RepeatFilter``); on SQLite and
PostgreSQL, on a real node."""

from __future__ import annotations

import asyncio
import logging
import traceback

import pytest

from app.logging import RepeatFilter, repeat_filter
from tests.conftest import STANDARD_CONFIG
from tests.helpers import finish, submit

CONTAINERS = [c["id"] for c in STANDARD_CONFIG["containers"]]


def _unavailable(caplog: pytest.LogCaptureFixture, container: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"resources of {container} unavailable")]


async def test_resources_of_a_down_container_are_logged_once_per_interval(make_node, client_address, caplog):
    caplog.set_level(logging.INFO, logger="jobnode.containers")
    repeats = repeat_filter(logging.getLogger("jobnode.containers"))
    assert repeats is not None
    repeats.clear()  # earlier tests of this process asked too
    interval = repeats.interval
    try:
        async with make_node(STANDARD_CONFIG) as node, node.client(client_address) as http:
            for _ in range(20):  # every container's url refuses connections
                r = await http.get("/resources")
                assert r.status_code == 200 and r.json() == {}
            for container in CONTAINERS:
                assert len(_unavailable(caplog, container)) == 1, container
            repeats.interval = 0.2  # the interval is over: the next line says what was held back
            await asyncio.sleep(0.3)
            assert (await http.get("/resources")).status_code == 200
            for container in CONTAINERS:
                first, second = _unavailable(caplog, container)
                assert second.getMessage().endswith("(suppressed 19 similar)"), second.getMessage()
                assert second.suppressed == 19 and "suppressed" not in first.getMessage()
    finally:
        repeats.interval = interval


async def test_sql_errors_carry_no_bound_values(node, client_address):
    """The texts of SQLAlchemy's exceptions (which the error logs print) leave out bound
    values: a job's input and outputs."""
    async with node.client(client_address) as http:
        job_id = await submit(http)
    database = node.node.database
    step = {"container": "echo", "output": {"secret": "OUTPUT-SECRET-7"}}
    await finish(database, job_id, "running", [step])
    with pytest.raises(Exception) as failed:  # the same step twice: a unique constraint
        await finish(database, job_id, "running", [step])
    text = "".join(traceback.format_exception(failed.value))
    assert "IntegrityError" in text or "UniqueViolation" in text, text
    assert "OUTPUT-SECRET-7" not in text and "parameters hidden" in text


def test_repeat_filter_holds_back_identical_lines_only(caplog):
    logger = logging.getLogger("tests.quiet_logs")
    repeats = RepeatFilter(interval=60)
    logger.addFilter(repeats)
    caplog.set_level(logging.INFO, logger="tests.quiet_logs")
    try:
        for _ in range(5):
            logger.warning("container %s down", "a")
            logger.warning("container %s down", "b")
            logger.info("job cancelled", extra={"job_id": "1"})
            logger.info("job cancelled", extra={"job_id": "2"})
            logger.error("database lost")
        messages = [(r.levelname, r.getMessage(), getattr(r, "job_id", None)) for r in caplog.records]
        assert messages.count(("WARNING", "container a down", None)) == 1
        assert messages.count(("WARNING", "container b down", None)) == 1
        assert messages.count(("INFO", "job cancelled", "1")) == messages.count(("INFO", "job cancelled", "2")) == 1
        assert messages.count(("ERROR", "database lost", None)) == 5  # errors always pass
    finally:
        logger.removeFilter(repeats)
