"""The ``control-signals`` thread: reads the control topic's signals (:mod:`bridge.signals`).

It assigns every partition of the control topic at its end when the agent starts (a signal written
before then is answered by the start-up resync anyway, which the agent starts only once the listener
is assigned; the control topic keeps the latest signal per key, so it stays small), and hands each
resync signal for this host, or for every host, and every re-assertion request, to the pipeline.
Anything else on the topic is logged and skipped.
"""

from __future__ import annotations

import logging
import threading
import uuid as uuid_mod
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bridge.consumer.partitions import NotReady, high_watermarks, list_partitions
from bridge.errors import DecodeError
from bridge.logging_setup import librdkafka_logger
from bridge.signals import ReassertSignal, Signal, decode_signal

log = logging.getLogger(__name__)


class SignalListener:
    """Owns the control-topic consumer and the ``control-signals`` thread."""

    def __init__(self, client_config: dict[str, Any], topic: str, host: str,
                 on_signal: Callable[[Signal], None]) -> None:
        self._topic = topic
        self._host = host
        self._on_signal = on_signal
        self._config = {
            **client_config,
            "group.id": f"libvirt-kafka-bridge-signals-{uuid_mod.uuid4()}",  # assign() only, never joined
            "enable.auto.commit": False,
            "logger": librdkafka_logger("signals", max_level=logging.DEBUG),
        }
        self._stop = threading.Event()
        self._assigned = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-signals", daemon=True)
        self._thread.start()

    def wait_assigned(self, timeout: float) -> bool:
        """Block until the listener reads from the topic's end (True), or ``timeout`` s pass."""
        return self._assigned.wait(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        consumer = Consumer(self._config)
        try:
            if not self._assign(consumer):
                return
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                try:
                    signal = decode_signal(msg.key(), msg.value())
                except DecodeError as exc:
                    log.warning("skipping a message on %s at offset %s: %s", self._topic, msg.offset(), exc)
                    continue
                if isinstance(signal, ReassertSignal):
                    self._on_signal(signal)
                elif signal.addresses(self._host):
                    self.received += 1
                    log.info("resync signal %s (for %s, by %s): resyncing now", signal.id[:8], signal.host,
                             signal.requested_by or "?")
                    self._on_signal(signal)
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> bool:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                partitions = list_partitions(consumer, [self._topic], 5, self._config)
                # The end as of now, read explicitly: a logical OFFSET_END resolves only when the
                # first fetch starts, and would skip a signal written in between.
                ends = high_watermarks(consumer, partitions, 5, self._config)
                consumer.assign([TopicPartition(t, p, ends[(t, p)]) for t, p in partitions])
                self._assigned.set()
                return True
            except NotReady as exc:
                log.warning("control topic %s not readable yet: %s", self._topic, exc)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        return False
