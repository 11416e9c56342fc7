"""The Kafka producer edge: idempotent, ``acks=all``, compressed, Java-compatible partitioning.

Owns the producer and the ``kafka-delivery`` thread that serves its delivery reports. A message
sequence (a record, or a DELETED record and its tombstone) completes when every message in it is
acknowledged; then its ``on_done`` runs, on the delivery thread. Nothing is ever dropped: librdkafka
retries without a local timeout by default (``message.timeout.ms=0``), and a delivery that still
fails is produced again, in order, after a backoff. Resending is safe: the copy carries the same
version, which readers ignore as not newer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.errors import UserError
from bridge.kafka_problems import KAFKA_CONFIG_PLACES, error_text
from bridge.logging_setup import librdkafka_logger

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "zstd",
    "partitioner": "murmur2_random",
    # An event's record waits at most this long for others to share its request. At 5 ms (Kafka's
    # own default) the p99 at 1000 events/s was level with a bare virsh|kcat pipe's (9.6 to 18.2 ms
    # against 16.8 to 17.9); at 1 ms it is 8.3 to 10.9, with bursts and the 2000/s tail unchanged
    # (in flight, requests still batch). --kafka-config linger.ms=20 trades latency for bursts.
    "linger.ms": 1,
    "message.timeout.ms": 0,
    "retry.backoff.max.ms": 5000,
}

# Settings the bridge's guarantees depend on; a pass-through that changes them is refused.
_LOCKED = {"enable.idempotence": "true", "acks": {"all", "-1"}, "partitioner": "murmur2_random"}


class KafkaProducer(Protocol):
    """What the publisher uses of ``confluent_kafka.Producer`` (tests pass a fake)."""

    def produce(self, topic: str, *, key: bytes, value: bytes | None, headers: list[tuple[str, str | bytes | None]],
                on_delivery: Callable[[KafkaError | None, object], None]) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def __len__(self) -> int: ...


ProducerFactory = Callable[[dict[str, Any]], KafkaProducer]


@dataclass(frozen=True)
class Message:
    """One message to produce."""

    topic: str
    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class _Sequence:
    messages: Sequence[Message]
    on_done: Callable[[], None]
    produced_at: float
    on_position: Callable[[int, int], None] | None = None
    acked: int = 0
    failed: bool = False
    attempts: int = 1
    outstanding: int = 0


@dataclass(order=True)
class _Retry:
    due: float
    seq_no: int
    sequence: _Sequence = field(compare=False)


def producer_config(client_config: dict[str, str]) -> dict[str, Any]:
    """The producer settings: the bridge's defaults, then the user's pass-through (checked)."""
    for key, required in _LOCKED.items():
        if key in client_config:
            value = str(client_config[key]).lower()
            ok = value in required if isinstance(required, set) else value == required
            if not ok:
                raise UserError(
                    f"--kafka-config {key}={client_config[key]} is not allowed: the bridge's ordering and "
                    f"no-loss guarantees need {key}={required if isinstance(required, str) else 'all'}"
                )
    return {**PRODUCER_DEFAULTS, **client_config}


class Publisher:
    """Owns the producer and the ``kafka-delivery`` thread."""

    def __init__(self, client_config: dict[str, str], max_retry_backoff: float = 10.0,
                 producer_factory: ProducerFactory = Producer) -> None:
        self._config = producer_config(client_config)
        self._config["error_cb"] = self._on_error
        self._config["logger"] = librdkafka_logger("producer")
        self._producer_factory = producer_factory
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._in_flight: dict[int, _Sequence] = {}
        self._retries: list[_Retry] = []
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_backoff = max_retry_backoff
        self._last_error: str | None = None
        self.delivered = 0
        self.redelivered = 0
        self.delivery_errors = 0
        """Failed deliveries of single messages (each is produced again)."""
        self.client_errors = 0
        """Client-level errors reported by librdkafka (e.g. all brokers down)."""
        self._all_brokers_down = False
        self._last_delivery_ok = True
        self._last_delivery_error: str | None = None

    def start(self) -> None:
        try:
            self._producer = self._producer_factory(self._config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise UserError(f"bad Kafka producer setting in {KAFKA_CONFIG_PLACES}: "
                            f"{error_text(exc, self._config)}") from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="kafka-delivery", daemon=True)
        self._thread.start()

    def publish(self, messages: Sequence[Message], on_done: Callable[[], None],
                on_position: Callable[[int, int], None] | None = None) -> None:
        """Produce ``messages`` in order; ``on_done`` runs once all are acknowledged.

        ``on_position(partition, offset)``: where the first message landed, on its acknowledgement.
        """
        seq = _Sequence(messages, on_done, time.monotonic(), on_position)
        seq_id = next(self._ids)
        with self._lock:
            self._in_flight[seq_id] = seq
        self._produce(seq_id, seq)

    def in_flight(self) -> int:
        """Sequences produced and not yet acknowledged (retries included)."""
        with self._lock:
            return len(self._in_flight)

    def queue_depth(self) -> int:
        """Messages in librdkafka's queue: produced, not yet acknowledged (``len(producer)``)."""
        producer = self._producer
        return len(producer) if producer is not None else 0

    @property
    def alive(self) -> bool:
        """The delivery thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def kafka_problem(self) -> str | None:
        """Why Kafka looks unreachable now (all brokers down, or the latest delivery failed), or None."""
        if self._all_brokers_down:
            return f"all Kafka brokers are down: {self._last_error}"
        if not self._last_delivery_ok:
            return f"the latest Kafka delivery failed: {self._last_delivery_error}"
        return None

    @property
    def last_error(self) -> str | None:
        """The latest client-level error (e.g. all brokers down), cleared by the next delivery."""
        return self._last_error

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for everything in flight; returns how many sequences remain."""
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline:
            assert self._producer is not None
            self._producer.flush(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.in_flight()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _produce(self, seq_id: int, seq: _Sequence) -> None:
        assert self._producer is not None
        seq.acked = 0
        seq.failed = False
        seq.outstanding = len(seq.messages)
        def report(err: KafkaError | None, _msg: object) -> None:
            self._on_delivery(seq_id, err)

        def report_first(err: KafkaError | None, msg: Any) -> None:
            if err is None and seq.on_position is not None:
                seq.on_position(msg.partition(), msg.offset())
            self._on_delivery(seq_id, err)

        for i, msg in enumerate(seq.messages):
            while True:
                try:
                    self._producer.produce(msg.topic, key=msg.key, value=msg.value, headers=list(msg.headers),
                                           on_delivery=report_first if i == 0 else report)
                    break
                except BufferError:
                    # librdkafka's local queue is full: let deliveries drain it (bounded by domains).
                    self._producer.poll(0.1)

    def _on_delivery(self, seq_id: int, err: KafkaError | None) -> None:
        # Reports are served by whichever thread polls: the delivery thread, or flush() at shutdown.
        with self._lock:
            seq = self._in_flight.get(seq_id)
            if seq is None:
                return
            seq.outstanding -= 1
            if err is None:
                seq.acked += 1
                self._last_delivery_ok = True
                self._all_brokers_down = False
            else:
                seq.failed = True
                self.delivery_errors += 1
                self._last_delivery_ok = False
                self._last_delivery_error = error_text(err, self._config)
            if seq.outstanding:
                done = False
            elif seq.failed:
                done = False
                backoff = min(self._max_backoff, 0.1 * 2 ** min(seq.attempts, 10))
                seq.attempts += 1
                heapq.heappush(self._retries, _Retry(time.monotonic() + backoff, seq_id, seq))
            else:
                done = True
                self._in_flight.pop(seq_id, None)
                self.delivered += 1
                self._last_error = None
        if err is not None:
            log.warning("delivery failed (%s), will produce again: %s", "fatal" if err.fatal() else "retriable",
                        error_text(err, self._config))
        if done:
            seq.on_done()

    def _serve(self) -> None:
        assert self._producer is not None
        while not self._stop.is_set():
            self._producer.poll(0.1)
            now = time.monotonic()
            while True:
                with self._lock:
                    if not self._retries or self._retries[0].due > now:
                        break
                    retry = heapq.heappop(self._retries)
                    self.redelivered += 1
                self._produce(retry.seq_no, retry.sequence)

    def _on_error(self, err: KafkaError) -> None:
        text = error_text(err, self._config)  # as every text shown: status.json, /readyz, the log
        self._last_error = text
        self.client_errors += 1
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._all_brokers_down = True
        if err.fatal():
            log.error("Kafka producer fatal error: %s", text)
        else:
            log.warning("Kafka: %s", text)
