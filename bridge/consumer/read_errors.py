"""The reader's latest problem, and warnings about it at most once a minute per kind.

librdkafka reports transient trouble (brokers down, DNS) many times a second and keeps retrying
itself: each report updates :attr:`ErrorReport.last` (what ``Informer.last_error`` shows), and a kind
of error is logged once per :data:`WARN_EVERY` seconds. Thread-safe: reports come from librdkafka's
callbacks and the reader's thread, ``last`` is read from any thread.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("bridge.consumer.reflector")

WARN_EVERY = 60.0


class ErrorReport:
    """The latest problem reaching Kafka or the topics (None once reading works)."""

    def __init__(self, initial: str | None) -> None:
        self._lock = threading.Lock()  # guards _last and _warned
        self._last = initial
        self._warned: dict[object, float] = {}  # kind of error -> when it was last logged

    @property
    def last(self) -> str | None:
        with self._lock:
            return self._last

    def report(self, message: str | None, kind: object = None) -> None:
        """Record ``message`` (None: reading works again) and warn unless this kind warned lately."""
        now = time.monotonic()
        with self._lock:
            self._last = message
            if message is None:
                self._warned.clear()
                return
            key = kind if kind is not None else message
            if now - self._warned.get(key, -WARN_EVERY) < WARN_EVERY:
                return
            self._warned[key] = now
        log.warning("%s (retrying)", message)

    def set_quietly(self, message: str) -> None:
        """Record ``message`` without a warning (the caller raises it instead)."""
        with self._lock:
            self._last = message
