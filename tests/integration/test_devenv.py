"""The dev environment itself, against the real parts: Kafka brokers, libvirtd, QEMU/TCG guests."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it without __all__

from devenv import KafkaCluster, LibvirtHost, domain_xml, wait_until
from devenv._proc import pid_alive

Event = tuple[str, int, int]  # (domain name, lifecycle event, detail)


# -- helpers ---------------------------------------------------------------------------------------


def create_topic(kafka: KafkaCluster, partitions: int = 1, rf: int = 1, config: dict[str, str] | None = None) -> str:
    name = f"devenv-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    new = NewTopic(name, partitions, rf, config=config or {})
    futures = admin.create_topics([new], operation_timeout=30)
    futures[name].result(timeout=60)
    return name


def produce(kafka: KafkaCluster, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    """Produce idempotently (acks=all) and assert every record was acknowledged."""
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "compression.type": "zstd",
        }
    )
    errors: list[Any] = []
    acked: list[bytes] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            acked.append(msg.value())

    for key, value in items:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(120) == 0, "records still in flight"
    assert errors == []
    assert sorted(acked) == sorted(v for _, v in items)


def read_all(kafka: KafkaCluster, topic: str, partitions: int = 1) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` from offset 0 up to the high watermark, via a consumer group."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"devenv-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
        consumer.subscribe([topic])
        out: list[tuple[bytes | None, bytes | None]] = []
        positions = dict.fromkeys(ends, -1)
        deadline = time.monotonic() + 60
        while any(positions[p] + 1 < ends[p] for p in ends):
            assert time.monotonic() < deadline, f"read {len(out)} records, watermarks {ends}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            positions[partition] = offset
            out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


class Watcher:
    """Opens connections that put lifecycle events in one queue; closes them all at the end."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self._conns: list[tuple[libvirt.virConnect, int | None]] = []

    def open(self, uri: str, *, watch: bool = True) -> libvirt.virConnect:
        conn = libvirt.open(uri)
        callback_id = None
        if watch:
            callback_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
        self._conns.append((conn, callback_id))
        return conn

    def _on_event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self.events.put((dom.name(), event, detail))

    def expect(self, name: str, event: int, detail: int | None = None) -> None:
        """Wait (10 s) for ``event`` on ``name``, skipping others (e.g. RESUMED before STARTED)."""
        deadline = time.monotonic() + 10
        seen: list[Event] = []
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no event {event}/{detail} for {name}; saw {seen}")
            seen.append(got)
            if got[0] == name and got[1] == event and (detail is None or got[2] == detail):
                return

    def close(self) -> None:
        for conn, callback_id in self._conns:
            if callback_id is not None:
                conn.domainEventDeregisterAny(callback_id)
            conn.close()


@pytest.fixture
def watcher(libvirt_event_loop: None) -> Iterator[Watcher]:
    w = Watcher()
    yield w
    w.close()


def qemu_pid(host: LibvirtHost, name: str) -> int:
    return int((host.path("run") / "qemu" / f"{name}.pid").read_text())


def wait_for(cond: Any, what: str, timeout: float = 10) -> None:
    wait_until(cond, timeout=timeout, what=what, interval=0.05)


# -- Kafka -----------------------------------------------------------------------------------------


def test_kafka_round_trip(kafka: KafkaCluster) -> None:
    topic = create_topic(kafka, partitions=3)
    items = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(50)]
    produce(kafka, topic, items)
    assert sorted(read_all(kafka, topic, partitions=3)) == sorted(items)


def test_kafka_topics_are_not_auto_created(kafka: KafkaCluster) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    missing = f"devenv-missing-{uuid.uuid4().hex[:8]}"
    admin.list_topics(topic=missing, timeout=10)
    assert missing not in admin.list_topics(timeout=10).topics


def test_kafka_compaction_runs(kafka: KafkaCluster) -> None:
    compact = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
    }
    topic = create_topic(kafka, config=compact)
    produce(kafka, topic, [(b"k", f"v{i}".encode()) for i in range(20)])
    # The cleaner never touches the active segment, and a time-based roll happens only on an append
    # once segment.ms has passed: so wait for segment.ms to pass, then append.
    rolled_at = time.monotonic() + 0.2
    wait_until(lambda: time.monotonic() >= rolled_at, timeout=5, what="segment.ms to pass")
    produce(kafka, topic, [(b"other", b"last")])

    def compacted() -> bool:
        return [v for k, v in read_all(kafka, topic) if k == b"k"] == [b"v19"]

    wait_until(compacted, timeout=60, what="the cleaner to compact the topic", interval=0.5)


@pytest.mark.fleet
def test_kafka3_keeps_acknowledged_records_when_a_broker_goes(kafka3: KafkaCluster) -> None:
    admin = AdminClient({"bootstrap.servers": kafka3.bootstrap_servers})
    assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
    topic = create_topic(kafka3, partitions=3, rf=3)

    def batch(tag: str) -> list[tuple[bytes, bytes]]:
        return [(f"k{i}".encode(), f"{tag}-{i}".encode()) for i in range(30)]

    produce(kafka3, topic, batch("all-up"))
    kafka3.stop_node(2)  # controlled shutdown: leaves the ISRs at once
    produce(kafka3, topic, batch("node2-stopped"))
    kafka3.start_node(2)
    kafka3.wait_in_sync()
    kafka3.stop_node(0, kill=True)  # a crash, likely of the active controller
    produce(kafka3, topic, batch("node0-killed"))
    kafka3.start_node(0)
    kafka3.wait_in_sync()

    values = sorted(v for _, v in read_all(kafka3, topic, partitions=3) if v is not None)
    expected = sorted(v for tag in ("all-up", "node2-stopped", "node0-killed") for _, v in batch(tag))
    assert values == expected


# -- libvirt ---------------------------------------------------------------------------------------


def test_test_driver_events_cross_connections(libvirt_host: LibvirtHost, watcher: Watcher) -> None:
    reader = watcher.open(libvirt_host.test_uri)
    # The writer is a separate connection, as another process (the test vs. the agent) would be.
    writer = watcher.open(libvirt_host.test_uri, watch=False)
    name = f"devenv-{uuid.uuid4().hex[:8]}"
    dom = writer.defineXML(domain_xml(name, kind="test"))
    watcher.expect(name, libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED)
    assert name in [d.name() for d in reader.listAllDomains()]
    dom.undefine()
    watcher.expect(name, libvirt.VIR_DOMAIN_EVENT_UNDEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED)


@pytest.mark.qemu
def test_qemu_domain_runs_and_is_destroyed(libvirt_host: LibvirtHost, watcher: Watcher) -> None:
    conn = watcher.open(libvirt_host.qemu_uri)
    name = f"devenv-{uuid.uuid4().hex[:8]}"
    dom = conn.createXML(domain_xml(name))
    watcher.expect(name, libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED)
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
    pid = qemu_pid(libvirt_host, name)
    assert pid_alive(pid)
    # The guest really executes: its vCPU accumulates CPU time (SeaBIOS looping for a boot device).
    wait_for(lambda: dom.info()[4] > 0, "guest CPU time stays 0")

    dom.destroy()
    watcher.expect(name, libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
    wait_for(lambda: not pid_alive(pid), "QEMU process outlived destroy")


@pytest.fixture
def private_host(tmp_path: Path, libvirt_host: LibvirtHost) -> Iterator[LibvirtHost]:
    """A second host for tests that restart or stop it; reuses the session host's QEMU caps cache."""
    with LibvirtHost(tmp_path, name="host2", caps_cache=libvirt_host.path("cache") / "qemu") as host:
        yield host


@pytest.mark.qemu
def test_restart_keeps_domains_and_fires_close_callback(private_host: LibvirtHost, libvirt_event_loop: None) -> None:
    name = f"devenv-{uuid.uuid4().hex[:8]}"
    conn = libvirt.open(private_host.qemu_uri)
    dom = conn.defineXML(domain_xml(name))
    dom.create()
    pid = qemu_pid(private_host, name)
    closed: queue.Queue[int] = queue.Queue()
    conn.registerCloseCallback(lambda _conn, reason, _opaque: closed.put(reason), None)

    for kill in (False, True):  # a clean restart, then a crash of libvirtd
        private_host.restart(kill=kill)
        assert closed.get(timeout=10) == libvirt.VIR_CONNECT_CLOSE_REASON_EOF
        conn = libvirt.open(private_host.qemu_uri)
        conn.registerCloseCallback(lambda _conn, reason, _opaque: closed.put(reason), None)
        dom = conn.lookupByName(name)
        assert dom.isActive() and dom.isPersistent()
        assert qemu_pid(private_host, name) == pid and pid_alive(pid)

    conn.unregisterCloseCallback()
    conn.close()
    private_host.stop()  # destroys and undefines what is left
    assert not private_host.running
    assert not pid_alive(pid)


@pytest.mark.qemu
def test_stop_kills_qemus_of_a_dead_daemon(private_host: LibvirtHost) -> None:
    name = f"devenv-{uuid.uuid4().hex[:8]}"
    conn = libvirt.open(private_host.qemu_uri)
    conn.createXML(domain_xml(name))
    conn.close()
    pid = qemu_pid(private_host, name)
    daemon_pid = int((private_host.path("run") / "libvirtd.pid").read_text())
    private_host.kill()  # the daemon dies and leaves its QEMU orphaned
    assert pid_alive(pid) and not pid_alive(daemon_pid)
    private_host.stop()
    assert not pid_alive(pid)
