"""Every partition of some topics, and their watermarks: where a reader starts, and what it syncs to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from bridge.kafka_problems import error_text


class NotReady(Exception):
    """Kafka or a topic is not there yet; worth retrying. The message says what is missing."""


def list_partitions(consumer: Any, topics: Iterable[str], timeout: float,
                    settings: Mapping[str, Any], optional: Iterable[str] = ()) -> list[tuple[str, int]]:
    """(topic, partition) for every partition of ``topics`` and of the ``optional`` topics that exist;
    NotReady if Kafka or one of ``topics`` is missing.

    ``settings`` are the client's, so a secret in an error text is masked.
    """
    out: list[tuple[str, int]] = []
    required = list(topics)
    for topic in [*required, *optional]:
        try:
            meta = consumer.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise NotReady(f"cannot reach Kafka: {error_text(exc, settings)}") from None
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            if topic not in required and (tmeta is None or tmeta.error is None
                                          or tmeta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                continue  # an optional topic that does not exist
            error = tmeta.error if tmeta is not None else None
            reason = error.str() if error is not None else "no partitions"
            raise NotReady(f"topic {topic} is not available: {reason}")
        out.extend((topic, p) for p in sorted(tmeta.partitions))
    return out


def watermarks(consumer: Any, partitions: Iterable[tuple[str, int]], timeout: float,
               settings: Mapping[str, Any]) -> dict[tuple[str, int], tuple[int, int]]:
    """The brokers' (low, high) watermarks of each partition, asked now (not cached)."""
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, partition in partitions:
        try:
            marks = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
        except KafkaException as exc:
            raise NotReady(f"cannot read offsets of {topic}[{partition}]: {error_text(exc, settings)}") from None
        if marks is None:
            raise NotReady(f"timed out reading offsets of {topic}[{partition}]")
        out[(topic, partition)] = (int(marks[0]), int(marks[1]))
    return out


def high_watermarks(consumer: Any, partitions: Iterable[tuple[str, int]], timeout: float,
                    settings: Mapping[str, Any]) -> dict[tuple[str, int], int]:
    """The brokers' high watermark of each partition, asked now (not cached)."""
    return {key: high for key, (_, high) in watermarks(consumer, partitions, timeout, settings).items()}


def cached_high_watermarks(consumer: Any, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The high watermarks the client last saw in fetch replies (no request); partitions not fetched
    yet are left out. Call it on the thread that polls ``consumer``."""
    out: dict[tuple[str, int], int] = {}
    for topic, partition in partitions:
        marks = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=0, cached=True)
        if marks is not None and marks[1] >= 0:
            out[(topic, partition)] = int(marks[1])
    return out
