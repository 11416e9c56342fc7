"""Reading whole topics back in tests, and making fresh ones."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bridge.errors import DecodeError
from bridge.records import DomainRecord, HostRecord
from bridge.serde import RecordCodec


@dataclass(frozen=True)
class Raw:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def unique_topics(prefix: str = "t") -> tuple[str, str]:
    """A fresh (domains topic, hosts topic) pair for one test."""
    tag = uuid.uuid4().hex[:8]
    return f"{prefix}.{tag}.domains", f"{prefix}.{tag}.hosts"


def create_compacted(bootstrap: str, topic: str, partitions: int = 3, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact", **(config or {})})])
    fut[topic].result(30)


def read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Raw]:
    """Every message currently in ``topic`` (up to the high watermarks at call time), in partition order."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-" + uuid.uuid4().hex,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = c.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Raw] = []
        pos = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in parts}
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: at {pos}, want {ends}")
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            part, offset = msg.partition(), msg.offset()
            assert part is not None and offset is not None  # set on every consumed message
            pairs = list(msg.headers() or [])  # the consumer hands over a list of (name, value) pairs
            headers = tuple((str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in pairs)
            out.append(Raw(topic, part, offset, msg.key(), msg.value(), headers))
            pos[part] = offset + 1
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        c.close()


def domain_records(bootstrap: str, topic: str, codec: RecordCodec | None = None) -> list[DomainRecord]:
    """All decodable DomainRecords of ``topic`` in partition order (tombstones skipped)."""
    codec = codec or RecordCodec()
    out = []
    for raw in read_all(bootstrap, topic):
        if raw.value is None:
            continue
        try:
            out.append(codec.decode_domain(raw.value, raw.key).record)
        except DecodeError:
            continue
    return out


def host_records(bootstrap: str, topic: str) -> list[HostRecord]:
    codec = RecordCodec()
    return [codec.decode_host(r.value, r.key).record for r in read_all(bootstrap, topic) if r.value is not None]


def latest_by_key(records: list[DomainRecord]) -> dict[str, DomainRecord]:
    """The highest-version record per UUID."""
    out: dict[str, DomainRecord] = {}
    for r in records:
        if r.uuid not in out or r.version > out[r.uuid].version:
            out[r.uuid] = r
    return out
