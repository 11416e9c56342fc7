"""The JSON log format and librdkafka's logger (issue 11)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge.logging_setup import JsonFormatter, configure_logging, librdkafka_logger


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys  # noqa: PLC0415

            exc_info = sys.exc_info()
    rec = logging.LogRecord("bridge.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.created = 1_700_000_000.25
    rec.threadName = "pipeline"
    return rec


def test_json_formatter_writes_one_object_per_line():
    line = JsonFormatter().format(record("reading %s failed: %d ünï \"q\"\nnext", "dom", 3))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250000Z", "level": "WARNING", "logger": "bridge.test",
        "thread": "pipeline", "message": "reading dom failed: 3 ünï \"q\"\nnext",
    }


def test_json_formatter_keeps_the_traceback_on_the_same_line():
    line = JsonFormatter().format(record("step failed", exc=True))
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "step failed"
    assert out["exception"].startswith("Traceback") and "ValueError: boom\nsecond line" in out["exception"]


def test_configure_json_routes_librdkafka_lines_through_the_same_handler(restore_root_logger):
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    # confluent-kafka calls logger.log(level, "%s [%s] %s", facility, client name, text).
    librdkafka_logger("producer").log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "refused")
    quiet = librdkafka_logger("admin", max_level=logging.DEBUG)
    quiet.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-2", "refused")  # below INFO: dropped
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert lines == [{**lines[0], "level": "ERROR", "logger": "librdkafka.producer",
                      "message": "FAIL [rdkafka#producer-1] refused"}]


def test_configure_text_replaces_earlier_handlers(restore_root_logger):
    first, second = io.StringIO(), io.StringIO()
    configure_logging("WARNING", "text", first)
    configure_logging("WARNING", "text", second)
    logging.getLogger("bridge.x").warning("hello %s", "there")
    assert first.getvalue() == "" and second.getvalue().endswith(" WARNING bridge.x: hello there\n")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")
