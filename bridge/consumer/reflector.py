"""The reflector: reads the bridge's topics from a position and hands decoded messages to a sink.

It assigns every partition of the topics itself (no consumer group, nothing committed), from the
start position or the beginning, decodes each message with :class:`~bridge.serde.MessageDecoder`, and
skips what it cannot decode (counted, and logged with topic, partition and offset). It notes the high
watermarks when it first reaches Kafka and reports *synced* once it has read up to all of them.

It never gives up on a transient problem: an unreachable cluster or a missing topic is retried with
backoff and shown in :attr:`Reflector.last_error`. Only wrong security settings seen before it first
reads (refused credentials, an untrusted broker certificate) stop it, with a :class:`KafkaAccessError`
naming the setting. It runs on a thread its owner starts (the informer); :meth:`Reflector.run` returns
when the owner's stop event is set. Partitions added while it runs are not read until the next start
(adding partitions also moves keys, which the bridge does not support).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid as uuid_mod
import weakref
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from bridge.consumer.batch import (
    ConsumerError,
    KafkaAccessError,
    PollBatch,
    ReflectorCounters,
    Sink,
)
from bridge.consumer.partitions import NotReady, cached_high_watermarks, list_partitions, watermarks
from bridge.consumer.position import Offset, Position
from bridge.consumer.read_errors import ErrorReport
from bridge.errors import DecodeError, UserError
from bridge.kafka_problems import KAFKA_CONFIG_PLACES, KafkaProblem, diagnose, error_text
from bridge.logging_setup import librdkafka_logger
from bridge.serde import MessageDecoder, Payload, ReadAs, RecordCodec

__all__ = ["ConsumerError", "ConsumerFactory", "KafkaAccessError", "KafkaConsumer", "PollBatch",
           "Reflector", "ReflectorCounters", "Sink"]

log = logging.getLogger(__name__)
_CURRENT = ReadAs.CURRENT  # bound once: an Enum member lookup costs ~120 ns on Python 3.11, paid per message
# A named tuple's own __new__ is a Python function, twice the cost of tuple's; one is made per message.
_new_tuple = tuple.__new__
FETCH_TUNING: Mapping[str, int] = MappingProxyType({
    # While the client's queue of fetched messages is full it fetches only the partitions read to
    # their end, and a fetch with nothing to return waits this long: librdkafka's 500 ms stalled one
    # sync in five by half a second. 100 ms bounds that; the cost is an idle reader's ten fetch
    # requests a second per broker instead of two.
    "fetch.wait.max.ms": 100,
    # A partition whose queue of fetched messages is over queued.max.messages.kbytes (64 MiB) is not
    # fetched again for this long. At librdkafka's 1000 ms a rebuild read the queue dry long before
    # the next fetch: 70-200 ms stalls in one sync of two (100,000 records of 1.8 KB, zstd). The
    # check is local (no request while the queue is full).
    "fetch.queue.backoff.ms": 20,
    # librdkafka 2.16 drops the bootstrap connection once the metadata names the brokers, and a
    # request in flight on it (the reader's first, for the partitions) waits out the half of this
    # backoff that new connections are held back: 50 ms of every start at the default 100 ms, 5 ms
    # here. A down broker is retried from 10 ms on, still backing off to reconnect.backoff.max.ms (10 s).
    "reconnect.backoff.ms": 10,
})
"""The reader's librdkafka settings that differ from the defaults; a caller's client_config wins."""
BATCH_SIZE = 100
"""Messages per poll batch. Small enough that the view frees what a batch replaces (older records,
changes leaving the history) before 700 new objects start a young collection: the young collector
then finds little to promote. At 500 a 100,000-record rebuild ran 651 collections (5 full, 0.17 s),
at 100 it runs 152 (1 full, 0.03 s)."""
MARKS_EVERY = 0.5  # s; taken on the reader's thread: confluent-kafka 2.16 blocks other threads' calls as it polls


class KafkaConsumer(Protocol):
    """What the reflector uses of ``confluent_kafka.Consumer`` (tests pass a fake)."""

    def list_topics(self, topic: str, *, timeout: float) -> Any: ...

    def get_watermark_offsets(self, partition: TopicPartition, *, timeout: float,
                              cached: bool) -> tuple[int, int] | None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def incremental_assign(self, partitions: list[TopicPartition]) -> None: ...

    def poll(self, timeout: float) -> Any: ...

    def consume(self, num_messages: int, timeout: float) -> list[Any]: ...

    def close(self) -> None: ...


ConsumerFactory = Callable[[dict[str, Any]], KafkaConsumer]


class Reflector:
    """Reads ``domains_topic``, ``hosts_topic`` and, once it exists, ``heartbeats_topic`` into ``sink``."""

    def __init__(
        self,
        client_config: Mapping[str, Any],
        codec: RecordCodec,
        *,
        domains_topic: str,
        hosts_topic: str,
        sink: Sink,
        heartbeats_topic: str = "",  # "" or missing: liveness from HostRecords alone
        start: Position | None = None,
        batch_size: int = BATCH_SIZE,
        poll_timeout: float = 0.2,
        request_timeout: float = 10.0,
        max_backoff: float = 10.0,
        consumer_factory: ConsumerFactory = Consumer,
    ) -> None:
        if len({domains_topic, hosts_topic, heartbeats_topic} - {""}) < 2 + bool(heartbeats_topic):
            raise UserError(f"the topics must differ: {domains_topic!r}, {hosts_topic!r}, {heartbeats_topic!r}")
        self._decoder = MessageDecoder(codec, domains_topic, hosts_topic, heartbeats_topic)
        self._topics = (domains_topic, hosts_topic)
        self._optional = (heartbeats_topic,) if heartbeats_topic else ()
        self._sink = sink
        # Mutable during a poll (one update per message); a Position is built once per poll batch.
        self._next: dict[tuple[str, int], int] = dict(start) if start is not None else {}
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._request_timeout = request_timeout
        self._max_backoff = max_backoff
        self._targets: dict[tuple[str, int], int] = {}
        self._marks: dict[tuple[str, int], int] = {}  # replaced whole, never changed: read without a lock
        self._marks_due = 0.0
        self._deferred: list[TopicPartition] = []  # assigned after the first poll (see _connect)
        self._synced = False
        self._lock = threading.Lock()  # guards the counters, read from other threads
        self._counts = dict.fromkeys(("undecodable", *(r.value for r in ReadAs)), 0)
        self._errors = ErrorReport("no answer from Kafka yet")
        self._settings = dict(client_config)  # for masking secrets in every message shown
        self._connected = False
        self._access_problem: KafkaProblem | None = None
        config: dict[str, Any] = {
            **FETCH_TUNING,
            **client_config,
            # librdkafka insists on a group id; with assign() and no commits no group is ever joined.
            "group.id": f"libvirt-kafka-bridge-reader-{uuid_mod.uuid4()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # Weakly: the client holding this reader's method would make a cycle that keeps a stopped
            # informer's view (through the sink) until the cyclic collector's next full pass.
            "error_cb": _weakly(self._on_client_error),
            # At DEBUG: a down broker logs a burst of lines per second, and what matters already
            # reaches the error callback, last_error and one warning.
            "logger": librdkafka_logger("reader", max_level=logging.DEBUG),
        }
        try:
            self._consumer = consumer_factory(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise UserError(f"invalid Kafka client setting in {KAFKA_CONFIG_PLACES}: "
                            f"{error_text(exc, self._settings)}") from None
        self._closed = False

    @property
    def last_error(self) -> str | None:
        """The latest problem reaching Kafka or the topics, None once reading works."""
        return self._errors.last

    def counters(self) -> ReflectorCounters:
        with self._lock:
            c = self._counts
            return ReflectorCounters(undecodable=c["undecodable"], unknown_schema=c[ReadAs.NEWER_SCHEMA.value],
                                     legacy_fingerprint=c[ReadAs.LEGACY_FINGERPRINT.value])

    def high_watermarks(self) -> dict[tuple[str, int], int]:
        """Each partition's high watermark as fetch replies last reported it, at most MARKS_EVERY old;
        empty before the reader is assigned or once it is closed."""
        return {} if self._closed else dict(self._marks)

    def run(self, stop: threading.Event) -> None:
        """Read until ``stop`` is set, then close the consumer. Raises ConsumerError if fatal."""
        try:
            if not self._connect(stop):
                return
            while not stop.is_set():
                self._poll_once()
        finally:
            self.close()

    def close(self) -> None:
        """Close the Kafka consumer (idempotent); :meth:`run` does it when it returns."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    # -- start-up ----------------------------------------------------------------------------------

    def _connect(self, stop: threading.Event) -> bool:
        """Learn the partitions and their high watermarks, then assign; retry until it works."""
        backoff = 0.5
        # Short first requests, so a caller's sync timeout sees the reason; longer ones for slow links.
        timeout = min(1.0, self._request_timeout)
        while not stop.is_set():
            try:
                partitions = list_partitions(self._consumer, self._topics, timeout, self._settings,
                                             optional=self._optional)
                marks = watermarks(self._consumer, partitions, timeout, self._settings)
            except NotReady as exc:
                self._set_error(str(exc))
                self._serve_callbacks()
                if self._access_problem is not None:
                    raise KafkaAccessError(self._access_problem.message) from None
                stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                timeout = min(timeout * 2, self._request_timeout)
                continue
            self._targets = {key: high for key, (_, high) in marks.items()}
            # From the low watermark just read, not OFFSET_BEGINNING, which librdkafka would look up per
            # partition; a log start that moved since is handled by auto.offset.reset=earliest.
            assignment = [TopicPartition(t, p, self._next.get((t, p), marks[(t, p)][0])) for t, p in partitions]
            # A partition with nothing to read yet waits for the first poll: fetched first and alone (the
            # broker thread's order is a race), it would hold the whole first fetch for fetch.wait.max.ms
            # before the partitions with records joined (100 ms of one start in four).
            ready: list[TopicPartition] = []
            for tp in assignment:
                (ready if tp.offset < self._targets[(tp.topic, tp.partition)] else self._deferred).append(tp)
            if not ready:
                ready, self._deferred = self._deferred, []
            self._consumer.assign(ready)
            self._set_error(None)
            self._connected = True
            read = sorted({t for t, _ in partitions})
            log.info("reading %s (%d partitions) from %s; sync target %s", ", ".join(read), len(partitions),
                     Position(self._next).encode() or "the beginning",
                     Position(self._targets).encode() or "(empty topics)")
            self._deliver((), ())  # topics that are empty (or a start past the targets) are synced already
            return True
        return False

    # -- reading -----------------------------------------------------------------------------------

    def _poll_once(self) -> None:
        try:
            # consume(n, timeout) waits out the timeout unless n messages arrive, which would delay
            # live changes at low rates; wait for the first message only, then take what is there.
            first = self._consumer.poll(self._poll_timeout)
            raw = [] if first is None else [first, *self._consumer.consume(self._batch_size - 1, 0)]
            if time.monotonic() >= self._marks_due:
                self._marks_due = time.monotonic() + MARKS_EVERY
                self._marks = cached_high_watermarks(self._consumer, self._targets)
        except KafkaException as exc:
            self._set_error(f"consume failed: {error_text(exc, self._settings)}")
            return
        payloads: list[Payload] = []
        sources: list[Offset] = []
        moved = False
        if raw and any(m.error() is None for m in raw):
            self._set_error(None)  # reading works again
        raw.reverse()
        read = self._decoder.read
        while raw:
            # Popped, not iterated: each message is freed once read,
            # not kept to the end of the poll batch, where they would only add to the GC's young objects.
            msg = raw.pop()
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # The EOF offset is the end of the partition: past any control records too.
                    moved |= self._advance(msg.topic(), msg.partition(), msg.offset())
                    continue
                if err.fatal():
                    raise ConsumerError(f"fatal Kafka client error: {error_text(err, self._settings)}")
                self._set_error(error_text(err, self._settings))
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            where = (topic, partition)
            if offset >= self._next.get(where, 0):  # _advance, inlined: this runs per message
                self._next[where] = offset + 1
                moved = True
            source = _new_tuple(Offset, (topic, partition, offset))
            key = msg.key()
            try:  # decoded here, not in a method of its own: this runs per message
                payload, read_as = read(topic, key, msg.value(), msg.headers)
            except DecodeError as exc:
                self._skip_undecodable(source, key, exc)
                continue
            if read_as is not _CURRENT:
                self._count_read_as(read_as, source)
            payloads.append(payload)
            sources.append(source)
        if payloads or moved:
            self._deliver(tuple(payloads), tuple(sources))
        if self._deferred:
            self._assign_deferred()

    def _assign_deferred(self) -> None:
        """Assign the partitions _connect held back, now that the first fetch was answered (or the first
        poll timed out): the next fetch carries them beside the others and returns as soon as any
        partition has records."""
        try:
            self._consumer.incremental_assign(self._deferred)
        except KafkaException as exc:
            self._set_error(f"assigning {len(self._deferred)} partitions failed: {error_text(exc, self._settings)}")
            return  # retried after the next poll
        self._deferred = []

    def _advance(self, topic: str, partition: int, next_offset: int) -> bool:
        key = (topic, partition)
        if next_offset <= self._next.get(key, 0):
            return False
        self._next[key] = next_offset
        return True

    def _deliver(self, payloads: tuple[Payload, ...], sources: tuple[Offset, ...]) -> None:
        if not self._synced:
            self._synced = all(self._next.get(key, 0) >= high for key, high in self._targets.items())
            if self._synced:
                log.info("synced: read %s up to the high watermarks seen at start", self._topics[0])
        self._sink(PollBatch(payloads, sources, Position(self._next), self._synced))

    def _skip_undecodable(self, source: Offset, key: bytes | None, exc: DecodeError) -> None:
        with self._lock:
            self._counts["undecodable"] += 1
        log.warning("skipping undecodable message at %s (key %r): %s", source, _short(key), exc)

    def _count_read_as(self, read_as: ReadAs, source: Offset) -> None:
        """Count a message read other than as CURRENT (and say so, the first time for 0.1.0's)."""
        with self._lock:
            self._counts[read_as.value] += 1
            first = self._counts[read_as.value] == 1
        if read_as is ReadAs.LEGACY_FINGERPRINT and first:
            log.warning("reading records written by libvirt-kafka-bridge 0.1.0 (first at %s): their "
                        "single-object fingerprint is byte-reversed; accepted for this release only, "
                        "counted as legacy_fingerprint", source)
        elif read_as is ReadAs.NEWER_SCHEMA:
            log.debug("record at %s was written with an unknown (newer) schema; extra fields ignored", source)

    # -- errors ------------------------------------------------------------------------------------

    def _on_client_error(self, err: KafkaError) -> None:
        # librdkafka reports transient trouble (brokers down, DNS) here, often many times a second,
        # and keeps retrying itself: record each, warn once per kind of error and minute.
        text = error_text(err, self._settings)
        if err.fatal():
            log.error("fatal Kafka client error: %s", text)
        problem = diagnose(err, self._settings)
        if problem is not None and problem.definite and not self._connected:
            self._access_problem = problem  # _connect raises it: the settings are wrong, not Kafka down
            self._errors.set_quietly(problem.message)
            return
        self._set_error(problem.message if problem is not None else text, kind=err.code())

    def _serve_callbacks(self) -> None:
        """Run the error callbacks librdkafka queued (a blocking metadata request does not serve them);
        nothing is assigned yet, so no message can come."""
        with contextlib.suppress(KafkaException, RuntimeError):
            self._consumer.poll(0)

    def _set_error(self, message: str | None, kind: object = None) -> None:
        self._errors.report(message, kind)


def _weakly(method: Callable[[KafkaError], None]) -> Callable[[KafkaError], None]:
    ref = weakref.WeakMethod(method)

    def call(err: KafkaError) -> None:
        live = ref()
        if live is not None:
            live(err)
    return call


def _short(key: bytes | None) -> bytes | None:
    return key if key is None or len(key) <= 64 else key[:64] + b"..."
