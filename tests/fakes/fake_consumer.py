"""A Kafka consumer for :class:`bridge.consumer.reflector.Reflector`: partitions, watermarks, messages.

Topics and partitions are declared with :meth:`FakeConsumer.add_topic`; :meth:`FakeConsumer.append`
writes a message (raw bytes: valid records, or anything else) and returns its offset;
:meth:`FakeConsumer.skip` moves a partition's end past offsets that hold no message (compacted away,
or transaction markers), so only the partition EOF reaches it. After assignment ``poll``/``consume``
hand out each partition's messages from the assigned offset, then one ``_PARTITION_EOF`` whose offset
is the partition's end (as librdkafka does with ``enable.partition.eof``), again after every new
message. :meth:`FakeConsumer.inject_error` makes the next poll return an error message. Messages
appended while the reader runs are read too; the high watermark a ``get_watermark_offsets`` returns
is the end at that moment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition


@dataclass(frozen=True)
class FakeKafkaMessage:
    """What ``poll``/``consume`` return (``confluent_kafka.Message``'s methods)."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None = None
    _value: bytes | None = None
    _headers: list[tuple[str, bytes]] | None = None
    _error: KafkaError | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def error(self) -> KafkaError | None:
        return self._error


@dataclass
class _Partition:
    messages: dict[int, FakeKafkaMessage] = field(default_factory=dict)
    end: int = 0
    cursor: int | None = None
    """The next offset to hand out; None while not assigned."""
    eof_sent: bool = False


class FakeConsumer:
    """Scripted partitions behind the consumer API the reflector uses; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._errors: list[FakeKafkaMessage] = []
        self._rotation = 0
        self.config: dict[str, Any] | None = None
        self.assigned: list[tuple[str, int, int]] | None = None
        self.assign_calls: list[list[tuple[str, int]]] = []
        """The partitions of each assign() or incremental_assign() call, in order."""
        self.closed = False

    def factory(self, config: dict[str, Any]) -> FakeConsumer:
        """The ``consumer_factory`` to hand the reflector or informer: keeps the config, returns self."""
        self.config = config
        return self

    # -- the script ----------------------------------------------------------------------------------

    def add_topic(self, topic: str, partitions: int = 1) -> None:
        with self._cond:
            for p in range(partitions):
                self._partitions.setdefault((topic, p), _Partition())

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
               headers: list[tuple[str, bytes]] | None = None) -> int:
        """Write one message at the partition's end; returns its offset."""
        with self._cond:
            part = self._partitions[(topic, partition)]
            offset = part.end
            part.messages[offset] = FakeKafkaMessage(topic, partition, offset, key, value, headers)
            part.end += 1
            part.eof_sent = False
            self._cond.notify_all()
            return offset

    def skip(self, topic: str, partition: int, offsets: int) -> None:
        """Move the partition's end ``offsets`` further with no message in between."""
        with self._cond:
            part = self._partitions[(topic, partition)]
            part.end += offsets
            part.eof_sent = False
            self._cond.notify_all()

    def inject_error(self, code: int, *, fatal: bool = False) -> None:
        """The next poll returns an error message with ``code``."""
        with self._cond:
            self._errors.append(FakeKafkaMessage("", -1, -1, _error=KafkaError(code, fatal=fatal)))
            self._cond.notify_all()

    # -- confluent_kafka.Consumer ----------------------------------------------------------------------

    def list_topics(self, topic: str, *, timeout: float) -> Any:
        with self._cond:
            partitions = {p: SimpleNamespace(id=p) for (t, p) in self._partitions if t == topic}
        topics = {topic: SimpleNamespace(topic=topic, error=None, partitions=partitions)} if partitions else {}
        return SimpleNamespace(topics=topics)

    def get_watermark_offsets(self, partition: TopicPartition, *, timeout: float,
                              cached: bool) -> tuple[int, int] | None:
        with self._cond:
            part = self._partitions[(partition.topic, partition.partition)]
            return (min(part.messages, default=part.end), part.end)

    def assign(self, partitions: list[TopicPartition]) -> None:
        with self._cond:
            self.assigned = []
            self.assign_calls.clear()
        self.incremental_assign(partitions)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        with self._cond:
            self.assign_calls.append(sorted((tp.topic, tp.partition) for tp in partitions))
            assigned = self.assigned = self.assigned or []
            for tp in partitions:
                part = self._partitions[(tp.topic, tp.partition)]
                part.cursor = 0 if tp.offset == OFFSET_BEGINNING else tp.offset
                part.eof_sent = False
                assigned.append((tp.topic, tp.partition, tp.offset))

    def poll(self, timeout: float) -> FakeKafkaMessage | None:
        with self._cond:
            message = self._next()
            if message is None:
                self._cond.wait(min(timeout, 0.02))  # short: the reflector's stop is checked between polls
                message = self._next()
            return message

    def consume(self, num_messages: int, timeout: float) -> list[FakeKafkaMessage]:
        out: list[FakeKafkaMessage] = []
        with self._cond:
            while len(out) < num_messages and (message := self._next()) is not None:
                out.append(message)
        return out

    def close(self) -> None:
        self.closed = True

    def _next(self) -> FakeKafkaMessage | None:
        if self._errors:
            return self._errors.pop(0)
        keys = [k for k, part in self._partitions.items() if part.cursor is not None]
        for i in range(len(keys)):
            key = keys[(self._rotation + i) % len(keys)]
            part = self._partitions[key]
            assert part.cursor is not None
            message = next((part.messages[o] for o in range(part.cursor, part.end) if o in part.messages), None)
            if message is not None:
                part.cursor = message.offset() + 1
                self._rotation += 1
                return message
            if part.cursor < part.end or not part.eof_sent:
                part.cursor = part.end
                part.eof_sent = True
                self._rotation += 1
                return FakeKafkaMessage(key[0], key[1], part.end, _error=KafkaError(KafkaError._PARTITION_EOF))
        return None
