"""Logging, configured in one place (``jobnode serve`` calls ``configure_logging``).

The stdlib ``logging`` with two small formatters rather than structlog: every module
already logs through ``logging.getLogger``, uvicorn and SQLAlchemy do too, and a job
event only needs a few extra fields (``extra={"job_id", "container", …}``), which a
formatter can put on the line without a second logging pipeline.

- stderr is not a terminal (a service manager, a container, a file): one JSON object a
  line, ``{"ts", "level", "logger", "message", <extra fields>, "exception"?}``.
- a terminal: readable lines, ``HH:MM:SS.mmm LEVEL logger message key=value …``.

Loggers that clients can make write (a line per request: ``GET /resources`` with a
container down, a database outage, malformed requests) go through ``RepeatFilter``
(``rate_limited``), so that clients do not control the log's volume.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

#: Attributes every ``LogRecord`` has (and uvicorn's ANSI-coloured copy of its message);
#: anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and key[0] != "_"}


def _timestamp(record: logging.LogRecord) -> datetime:
    return datetime.fromtimestamp(record.created, UTC)


def _utc_iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; values that JSON cannot hold are written as text."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _utc_iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            body.setdefault(key, value)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exception"] = record.exc_text
        return msgspec.json.encode(body, enc_hook=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = _timestamp(record).astimezone().strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(f"{key}={value}" for key, value in extra_fields(record).items() if value is not None)
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: Seconds during which a repeated identical record is held back.
REPEAT_INTERVAL = 60.0


class RepeatFilter(logging.Filter):
    """Lets one of identical INFO/WARNING records through per ``interval`` seconds.

    Identical: same logger, level, formatted message and extra fields (so ``job
    cancelled`` of two jobs are two records). The next record let through after
    others were held back says how many: ``… (suppressed K similar)``, and carries
    ``suppressed=K``. ERROR and above always pass: they are rare and each one matters.
    """

    def __init__(self, interval: float = REPEAT_INTERVAL, max_keys: int = 1024) -> None:
        super().__init__()
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[tuple[Any, ...], list[float]] = {}  # key -> [last let through, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.levelno < logging.INFO:
            return True
        message = record.getMessage()
        extra = tuple(sorted((key, str(value)) for key, value in extra_fields(record).items()))
        key = (record.name, record.levelno, message, extra)
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if seen is None and len(self._seen) >= self.max_keys:
            self._forget(now)
        self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            held = int(seen[1])
            record.msg, record.args = f"{message} (suppressed {held} similar)", None
            record.suppressed = held
        return True

    def _forget(self, now: float) -> None:
        """Drop the keys whose interval is over (their held-back count is then lost)."""
        for key in [key for key, (last, _) in self._seen.items() if now - last >= self.interval]:
            del self._seen[key]
        if len(self._seen) >= self.max_keys:  # a flood of distinct lines: start over
            self._seen.clear()

    def clear(self) -> None:
        self._seen.clear()


def rate_limited(logger: logging.Logger) -> logging.Logger:
    """``logger`` with a ``RepeatFilter`` (one per logger, however often this is called)."""
    if not any(isinstance(existing, RepeatFilter) for existing in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger


def repeat_filter(logger: logging.Logger) -> RepeatFilter | None:
    return next((f for f in logger.filters if isinstance(f, RepeatFilter)), None)


def configure_logging(level: str = "INFO", stream: IO[str] | None = None, json_lines: bool | None = None) -> None:
    """Send every logger (ours, uvicorn's, SQLAlchemy's) to one handler on ``stream`` (stderr).

    ``json_lines`` defaults to "``stream`` is not a terminal". Raises ``ValueError`` for
    a level name that ``logging`` does not know.
    """
    stream = stream or sys.stderr
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log_level: unknown level {level!r}")
    if json_lines is None:
        json_lines = not (hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else ConsoleFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # A LogRecord need not look up the process and thread for every line.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    # Per-statement chatter of the drivers stays out even at DEBUG.
    for name in ("aiosqlite", "httpcore"):
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    # uvicorn installs handlers of its own unless told not to (log_config=None); make its
    # loggers go through ours either way.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
