"""Logging for every command: plain text for people, or one JSON object per line for log shippers.

``--log-format json`` writes each record as a single line with ``time`` (RFC 3339, UTC, microseconds),
``level``, ``logger``, ``thread``, ``message`` and, when there is one, ``exception``. librdkafka's own
log lines reach the same handler: every Kafka client the bridge makes gets :func:`librdkafka_logger`
as its ``logger`` setting, so nothing of librdkafka's is printed to stderr behind the formatter's back.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LIBRDKAFKA_LOGGER = "librdkafka"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record (librdkafka's included) to ``stream`` (stderr) in ``fmt``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (use {' or '.join(LOG_FORMATS)})")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))


class _Demoted(logging.LoggerAdapter[logging.Logger]):
    """Every line at ``level`` or below, whatever librdkafka's own severity."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__(logger, {})
        self._ceiling = level

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(min(level, self._ceiling), msg, *args, **kwargs)


def librdkafka_logger(client: str, *, max_level: int | None = None) -> logging.Logger | logging.LoggerAdapter[Any]:
    """The ``logger`` setting for a Kafka client: librdkafka's lines under ``librdkafka.<client>``.

    librdkafka queues its lines for the client's ``poll()`` (they are served on the polling thread).
    ``max_level`` caps their level, for a client whose failures already surface as exceptions or
    error callbacks (a down broker logs a burst of ``FAIL`` lines per second).
    """
    logger = logging.getLogger(f"{LIBRDKAFKA_LOGGER}.{client}")
    return logger if max_level is None else _Demoted(logger, max_level)
