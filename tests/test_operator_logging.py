"""Structured logs: JSON lines off a terminal, readable lines on one, job id and container
on every job event, the level from the config; the process test on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from app.logging import ConsoleFormatter, JsonFormatter, configure_logging
from tests.helpers import job, submit
from tests.support import NodeProcess, wait_finished


def _record(message: str = "step %d done", *args: object, **extra: object) -> logging.LogRecord:
    return logging.getLogger("jobnode.jobs").makeRecord(
        "jobnode.jobs", logging.INFO, __file__, 1, message, args or (0,), None, extra=extra
    )


def test_json_lines_carry_the_extra_fields():
    line = JsonFormatter().format(_record(job_id="j-1", container="echo", duration_seconds=0.25, seen=object))
    body = json.loads(line)
    assert body["level"] == "info" and body["logger"] == "jobnode.jobs" and body["message"] == "step 0 done"
    assert body["job_id"] == "j-1" and body["container"] == "echo" and body["duration_seconds"] == 0.25
    assert body["ts"].endswith("Z") and "T" in body["ts"]
    assert body["seen"] == str(object)  # not JSON: written as text rather than dropped
    assert "\n" not in line
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    body = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in body["exception"] and body["message"] == "oops"


def test_console_lines_are_readable():
    line = ConsoleFormatter().format(_record(job_id="j-1", container="echo", error=None))
    assert " INFO    jobnode.jobs: step 0 done  [job_id=j-1 container=echo]" in line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_configure_picks_the_format_from_the_stream_and_the_level():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        pipe = io.StringIO()
        configure_logging("WARNING", stream=pipe)
        logging.getLogger("jobnode.jobs").info("hidden", extra={"job_id": "a"})
        logging.getLogger("jobnode.jobs").warning("shown", extra={"job_id": "a", "container": "c"})
        logging.getLogger("uvicorn.error").warning("from uvicorn")
        lines = [json.loads(line) for line in pipe.getvalue().splitlines()]
        assert [(b["message"], b.get("job_id")) for b in lines] == [("shown", "a"), ("from uvicorn", None)]
        tty = _Tty()
        configure_logging("debug", stream=tty)
        logging.getLogger("jobnode.jobs").debug("visible", extra={"job_id": "b"})
        assert "DEBUG   jobnode.jobs: visible  [job_id=b]" in tty.getvalue()
        with pytest.raises(ValueError, match="log_level"):
            configure_logging("LOUD")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def test_a_served_node_logs_json_lines_with_job_ids(database_url, host_service, tmp_path, client_address):
    echo, fail = host_service("echo"), host_service("fail")
    ok, bad = f"ok-{client_address}", f"bad-{client_address}"
    config = {
        "database": {"url": database_url},
        "manage_containers": False,
        "log_level": "DEBUG",  # the routine life of a job is logged at DEBUG
        "scheduler": {"poll_interval": 0.2},
        "containers": [{"id": ok, "url": echo.url}, {"id": bad, "url": fail.url}],
    }
    process = NodeProcess(tmp_path, config)
    try:
        process.start()
        async with process.client(client_address) as http:
            good = await submit(http, job(ok, data={"n": 1}))
            failed = await submit(http, job(ok, bad, data={"n": 2}))
            await wait_finished(http, [good, failed])
    finally:
        assert process.terminate() == 0
    lines = [json.loads(line) for line in process.log().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    # This test's jobs only: a node on the shared PostgreSQL database may also deliver another
    # test's webhooks (logged with that job's id and no container).
    ours = (good, failed)
    events = [(line["job_id"], line["container"], line["message"]) for line in lines if line.get("job_id") in ours]
    assert (good, ok, "job claimed (attempt 1)") in events
    assert any(j == good and c == ok and m.startswith("step 0 done in ") for j, c, m in events), events
    assert (good, ok, "job success") in events
    assert (failed, bad, 'step 1 failed (http_status): HTTP 500: {"detail": "boom"}') in events
    assert (failed, bad, "job failed") in events
    failure = next(line for line in lines if line.get("job_id") == failed and line.get("error_kind"))
    assert failure["level"] == "warning" and failure["step"] == 1 and failure["error"].startswith("HTTP 500")
    assert any(line["logger"].startswith("uvicorn") for line in lines), "uvicorn's records bypass the formatter"
