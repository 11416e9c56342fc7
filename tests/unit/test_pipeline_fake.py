"""The pipeline thread over a fake libvirt host and a fake producer behind the real publisher.

Streaming (the ``Domain not found`` retry, gone domains, a hand-off that overtakes a snapshot), the
resync's completion (the inventory only after every RESYNC record is acknowledged) and the drain's
deadline, each seen from what reaches the producer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import libvirt
import pytest

from bridge.agent.listing import ListedDomain
from bridge.agent.pipeline import Pipeline
from bridge.agent.pipeline_config import PipelineConfig
from bridge.agent.publisher import Message, Publisher
from bridge.agent.snapshot import SnapshotReader, SnapshotRequest, SnapshotResult
from bridge.agent.state_store import StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.read_groups import GROUP_MAX
from bridge.core.version_clock import wall_clock_micros
from bridge.records import DomainEvent, DomainRecord, HostRecord, HostStatus, RecordKind
from bridge.serde import DomainTombstone, Payload
from devenv import hold
from devenv import wait_until as devenv_wait_until
from tests.fakes import FakeConnection, FakeDomain, FakeProducer, FakeSession, Produced, decode, libvirt_error
from tests.fakes.records import AGENT, CODEC, DOMAINS, HOSTS, uuid_of

CONFIG = PipelineConfig(host="hv1", domains_topic=DOMAINS, hosts_topic=HOSTS, resync_interval=3600,
                        heartbeat_interval=3600, snapshot_readers=2, not_found_retry=2.0)


class CountingReader:
    """The real snapshot reader, counting the reads of each domain (a ``SnapshotSource``)."""

    def __init__(self, reader: SnapshotReader) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self.reads: dict[str, int] = {}
        self.groups: list[int] = []
        """The size of each group read, in the order the reads began."""
        self.permits: threading.Semaphore | None = None
        """When set, each read waits for a permit from it."""
        self.waiting = 0

    def read_many(self, requests: Sequence[SnapshotRequest]) -> list[SnapshotResult]:
        with self._lock:
            self.groups.append(len(requests))
            for request in requests:
                self.reads[request.uuid] = self.reads.get(request.uuid, 0) + 1
            self.waiting += 1
        try:
            if self.permits is not None:
                assert self.permits.acquire(timeout=10), "a test left the reads held"
        finally:
            with self._lock:
                self.waiting -= 1
        return self._reader.read_many(requests)

    def forget(self, uuid: str) -> None:
        self._reader.forget(uuid)

    def reads_job(self, uuid: str) -> bool:
        return self._reader.reads_job(uuid)

    def prime(self, conn: Any, listed: Iterable[ListedDomain]) -> None:
        self._reader.prime(conn, listed)

    def count(self, uuid: str) -> int:
        with self._lock:
            return self.reads.get(uuid, 0)


@dataclass
class Agent:
    pipeline: Pipeline
    queue: WorkQueue
    producer: FakeProducer
    conn: FakeConnection
    reader: CountingReader
    stopped: list[bool] = field(default_factory=list)

    def payloads(self, start: int = 0) -> list[tuple[Produced, Payload]]:
        return [(m, decode(Message(m.topic, m.key, m.value, tuple(m.headers))))  # type: ignore[arg-type]
                for m in self.producer.produced[start:]]

    def event(self, uuid: str, event_id: str = "LIFECYCLE", type_: str | None = None,
              detail: str | None = None) -> None:
        self.queue.add_event(uuid, f"vm-{uuid[-2:]}", DomainEvent(event_id, wall_clock_micros(), type_, detail))

    def settle(self) -> None:
        """Acknowledge the first HostRecord and the listing's RESYNC record, then the inventory."""
        self.producer.wait_produced(2)
        self.producer.ack_all()
        self.wait_for_inventory()
        self.producer.ack_all()

    def wait_for_inventory(self, timeout: float = 5.0) -> HostRecord:
        def inventory() -> HostRecord | None:
            return next((p for _m, p in self.payloads() if isinstance(p, HostRecord) and p.resync_id), None)

        devenv_wait_until(lambda: inventory() is not None, timeout=timeout, what="an inventory published",
                          interval=0.01)
        found = inventory()
        assert found is not None
        return found


def wait_until(test, timeout: float = 5.0, what: str = "condition") -> None:
    devenv_wait_until(lambda: bool(test()), timeout=timeout, what=what, interval=0.01)


@pytest.fixture
def conn(request) -> FakeConnection:
    """The host, with ``param`` running domains (default 1) when the pipeline starts."""
    return FakeConnection([FakeDomain(uuid_of(n), f"vm-0{n}") for n in range(1, getattr(request, "param", 1) + 1)])


@pytest.fixture
def agent(request, tmp_path, conn) -> Iterator[Agent]:
    producer = FakeProducer(auto_ack=getattr(request, "param", True))
    publisher = Publisher({}, max_retry_backoff=0.05, producer_factory=producer.factory)
    publisher.start()
    session = FakeSession(conn)
    store = StateStore(tmp_path / "state")
    queue = WorkQueue(wall_clock_micros)
    reader = CountingReader(SnapshotReader(session, wall_clock_micros))
    pipeline = Pipeline(CONFIG, queue, session, reader, store, publisher, CODEC, lambda: AGENT, wall_clock_micros)
    pipeline.start()
    try:
        yield Agent(pipeline, queue, producer, conn, reader)
    finally:
        pipeline.stop()
        publisher.stop()
        store.close()


manual_acks = pytest.mark.parametrize("agent", [False], indirect=True)


# -- streaming -------------------------------------------------------------------------------------------


def test_a_domain_not_found_at_first_is_read_again_and_published_as_an_event(agent, conn):
    agent.wait_for_inventory()
    start = len(agent.producer.produced)
    fresh = conn.add(FakeDomain(uuid_of(2), "fresh"))
    conn.hide(fresh.uuid, lookups=1)  # defined, but libvirt answers "Domain not found" once

    agent.event(fresh.uuid, "LIFECYCLE", "DEFINED", "ADDED")
    agent.producer.wait_produced(start + 1)

    (_m, record), = agent.payloads(start)
    assert isinstance(record, DomainRecord)
    assert (record.uuid, record.kind, record.state) == (fresh.uuid, RecordKind.EVENT, "RUNNING")
    assert [e.type for e in record.events] == ["DEFINED"]
    assert agent.reader.count(fresh.uuid) == 2


def test_events_that_say_the_domain_is_gone_give_deleted_and_a_tombstone_without_a_retry(agent, conn):
    agent.wait_for_inventory()
    gone = uuid_of(1)
    reads_before = agent.reader.count(gone)
    start = len(agent.producer.produced)
    conn.remove(gone)

    began = time.monotonic()
    agent.event(gone, "LIFECYCLE", "STOPPED", "DESTROYED")
    agent.producer.wait_produced(start + 2)
    elapsed = time.monotonic() - began

    (m1, deleted), (m2, tombstone) = agent.payloads(start)
    assert isinstance(deleted, DomainRecord) and deleted.kind is RecordKind.DELETED
    assert isinstance(tombstone, DomainTombstone) and tombstone.uuid == gone
    assert m1.key == m2.key == gone.encode()
    assert m2.value is None
    assert agent.reader.count(gone) - reads_before == 1, "read once, not retried"
    assert elapsed < CONFIG.not_found_retry, "not held for the not-found retry"


@manual_acks
def test_events_overtaken_by_their_hand_off_before_the_snapshot_are_not_published_but_counted(agent, conn):
    domain = uuid_of(1)
    agent.settle()

    agent.event(domain, "REBOOT")
    in_flight = agent.producer.wait_produced(len(agent.producer.produced) + 1)[-1]
    reads = agent.reader.count(domain)
    # Queued behind the record in flight, while still owned: an event, then the migration's hand-off.
    agent.event(domain, "REBOOT")
    agent.event(domain, "LIFECYCLE", "SUSPENDED", "MIGRATED")
    produced = len(agent.producer.produced)
    agent.producer.ack(in_flight.index)  # now the two events are taken together

    wait_until(lambda: agent.pipeline.stats.events_not_owned == 2, what="the events counted as not owned")
    wait_until(agent.queue.idle, what="the batch done with")
    assert len(agent.producer.produced) == produced, "nothing published after the hand-off"
    assert agent.reader.count(domain) == reads, "not even read"
    assert not agent.pipeline.ownership.owns(domain)


# -- the resync's completion -------------------------------------------------------------------------------


@manual_acks
@pytest.mark.parametrize("conn", [3], indirect=True)
def test_the_inventory_is_published_only_after_every_resync_record_is_acked(agent, conn):
    produced = agent.producer.wait_produced(4)  # the first HostRecord and three RESYNC records
    records = [(m, p) for m, p in agent.payloads() if isinstance(p, DomainRecord)]
    assert sorted(p.uuid for _m, p in records) == [uuid_of(n) for n in (1, 2, 3)]
    assert all(p.kind is RecordKind.RESYNC for _m, p in records)
    (resync_id,) = {p.resync_id for _m, p in records}

    def inventories() -> list[HostRecord]:
        return [p for _m, p in agent.payloads() if isinstance(p, HostRecord) and p.resync_id == resync_id]

    last, _ = records[-1]
    for m in produced:
        if m is not last:
            agent.producer.ack(m.index)
    def no_inventory() -> None:
        assert inventories() == [], "an inventory before its last RESYNC record was acknowledged"

    hold(0.3, check=no_inventory)

    agent.producer.ack(last.index)
    wait_until(lambda: bool(inventories()), what="the inventory")
    (inventory,) = inventories()
    assert sorted((e.uuid, e.version) for e in inventory.domains) == sorted((p.uuid, p.version) for _m, p in records)


# -- the drain -------------------------------------------------------------------------------------------------


@manual_acks
def test_drain_and_stop_returns_by_the_deadline_and_publishes_stopping_last(agent, conn):
    agent.settle()
    agent.event(uuid_of(1), "REBOOT")
    agent.producer.wait_produced(len(agent.producer.produced) + 1)  # never acknowledged

    began = time.monotonic()
    clean = agent.pipeline.drain_and_stop(began + 0.5)
    elapsed = time.monotonic() - began

    assert not clean, "a record was left unacknowledged"
    assert 0.4 <= elapsed < 1.5
    _m, last = agent.payloads()[-1]
    assert isinstance(last, HostRecord) and last.status is HostStatus.STOPPING
    assert not agent.pipeline.alive


def test_drain_and_stop_with_everything_acked_returns_at_once(agent, conn):
    agent.wait_for_inventory()
    began = time.monotonic()
    assert agent.pipeline.drain_and_stop(began + 5)
    assert time.monotonic() - began < 1.5
    _m, last = agent.payloads()[-1]
    assert isinstance(last, HostRecord) and last.status is HostStatus.STOPPING


# -- a listing's ownership decision, checked again at the read ---------------------------------------------


@manual_acks
def test_a_listed_domain_that_reads_as_an_incoming_migration_is_not_published(agent, conn):
    # The soak's case: a restarted destination lists the incoming domain while its migration is being
    # prepared (shut off, no job yet) and owns it; by the read of its RESYNC record it is the paused
    # incoming domain, whose job statistics libvirt refuses ("available only on the source host").
    agent.settle()
    incoming = uuid_of(2)
    dom = conn.add(FakeDomain(incoming, "vm-02", libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN))
    start = len(agent.producer.produced)
    # Listed shut off, read paused for the migration: the listing is made to see the first, the read the second.
    agent.pipeline.ownership.on_listed(incoming, "SHUTOFF", "UNKNOWN", active=False)
    dom.dom_state, dom.dom_reason = libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION
    dom.job = libvirt_error(libvirt.VIR_ERR_OPERATION_UNSUPPORTED, "available only on the source host")
    agent.queue.request_resync([incoming], "r-test")
    wait_until(lambda: not agent.pipeline.ownership.owns(incoming), what="the read to make it incoming")
    wait_until(agent.queue.idle, what="the batch done with")
    records = [p for _m, p in agent.payloads(start) if isinstance(p, DomainRecord) and p.uuid == incoming]
    assert records == [], f"published a RESYNC record for another host's incoming domain: {records}"
    assert conn.count("jobStats", incoming) == 1


class _SlowJobDomain(FakeDomain):
    """Listed ``PAUSED/MIGRATION``: the listing reads its job at once, the RESYNC read's job read then
    waits for :attr:`release` (a migration's source answers job statistics in seconds)."""

    def __init__(self, uuid: str, name: str) -> None:
        super().__init__(uuid, name, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
        self.release = threading.Event()
        self.job_reads = 0

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        self.job_reads += 1
        if self.job_reads > 1:
            self.release.wait(10)
        return super().jobStats(flags)


def test_a_slow_migration_job_read_holds_up_no_other_domain_s_resync_record(tmp_path):
    slow = _SlowJobDomain(uuid_of(2), "vm-02")
    conn = FakeConnection([FakeDomain(uuid_of(1), "vm-01"), slow, FakeDomain(uuid_of(3), "vm-03")])
    producer = FakeProducer(auto_ack=True)
    publisher = Publisher({}, max_retry_backoff=0.05, producer_factory=producer.factory)
    publisher.start()
    store = StateStore(tmp_path / "state")
    session = FakeSession(conn)
    pipeline = Pipeline(CONFIG, WorkQueue(wall_clock_micros), session, SnapshotReader(session, wall_clock_micros),
                        store, publisher, CODEC, lambda: AGENT, wall_clock_micros)
    pipeline.start()

    def resynced() -> set[str]:
        payloads = [decode(Message(m.topic, m.key, m.value, tuple(m.headers))) for m in producer.produced]  # type: ignore[arg-type]
        return {p.uuid for p in payloads if isinstance(p, DomainRecord) and p.kind is RecordKind.RESYNC}

    try:
        wait_until(lambda: resynced() == {uuid_of(1), uuid_of(3)}, what="the other domains' RESYNC records")
        assert slow.job_reads == 2 and not slow.release.is_set(), "published while the job read still waits"
        slow.release.set()
        wait_until(lambda: resynced() == {uuid_of(n) for n in (1, 2, 3)}, what="the slow one's record after it")
    finally:
        slow.release.set()
        pipeline.stop()
        publisher.stop()
        store.close()


@pytest.mark.parametrize("conn", [200], indirect=True)
def test_a_backlog_is_read_in_full_groups_as_reads_finish_one_by_one(agent, conn):
    # A limit counted in reads let each finished read take one batch: a burst that began as a
    # trickle (a read of one domain, then another) went on in groups of one, two round-trips a
    # domain instead of one and a sixteenth, however long the backlog grew.
    agent.wait_for_inventory()
    start = len(agent.reader.groups)
    permits = agent.reader.permits = threading.Semaphore(0)

    def records() -> int:
        return sum(1 for _m, p in agent.payloads() if isinstance(p, DomainRecord) and p.events)

    try:
        for n in (1, 2):  # the trickle: each reader takes one domain
            agent.event(uuid_of(n), "LIFECYCLE", "SUSPENDED", "PAUSED")
            wait_until(lambda n=n: agent.reader.waiting == n, what=f"reader {n} busy")
        for n in range(3, 201):
            agent.event(uuid_of(n), "LIFECYCLE", "SUSPENDED", "PAUSED")
        while records() < 200 and len(agent.reader.groups) - start < 60:
            done = records()
            permits.release()  # one group's read finishes at a time
            wait_until(lambda done=done: records() > done or agent.reader.waiting == 0, what="that group's records")
    finally:
        permits.release(1000)
    wait_until(lambda: records() == 200, what="a record per event")
    groups = agent.reader.groups[start:]
    assert sum(groups) == 200
    # 2 trickled singletons, then full groups but for the backlog's tail.
    assert len(groups) <= 2 + -(-198 // GROUP_MAX) + CONFIG.snapshot_readers, groups


# -- the listing's round-trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("conn", [3], indirect=True)
def test_a_listing_and_its_resync_records_cost_one_domain_call_each(agent, conn):
    # The profile of a 10,000-domain start-up: a state() per domain in the listing, then lookup, XML,
    # state and isPersistent per RESYNC read. Now: one bulk stats call, one transient listing, and the
    # XML per record (the handle, state and flags come from the listing).
    agent.wait_for_inventory()
    assert conn.count("getAllDomainStats") == 1
    assert conn.count("listAllDomains") == 1  # the transient ones
    for n in (1, 2, 3):
        uuid = uuid_of(n)
        calls = {m: conn.count(m, uuid) for m in ("lookupByUUIDString", "XMLDesc", "state", "isPersistent")}
        assert calls == {"lookupByUUIDString": 0, "XMLDesc": 1, "state": 0, "isPersistent": 0}, (uuid, calls)
    records = [p for _m, p in agent.payloads() if isinstance(p, DomainRecord)]
    want = [(uuid_of(n), True, "RUNNING") for n in (1, 2, 3)]
    assert sorted((r.uuid, r.persistent, r.state) for r in records) == want

    # An event's read is a full one: state and persistence are read from the domain, not taken from the
    # listing, in the bulk request (twice for a transient domain: the persistent filter leaves it out).
    dom = conn.lookupByUUIDString(uuid_of(1))
    dom.persistent = False
    agent.event(uuid_of(1), "LIFECYCLE", "UNDEFINED", "REMOVED")  # undefined while running: transient now
    wait_until(lambda: any(isinstance(p, DomainRecord) and p.events and not p.persistent
                           for _m, p in agent.payloads()), what="the event's record, read in full")
    assert {m: conn.count(m, uuid_of(1)) for m in ("XMLDesc", "state", "isPersistent", "domainListGetStats")} == \
        {"XMLDesc": 2, "state": 0, "isPersistent": 0, "domainListGetStats": 2}

    agent.event(uuid_of(2), "LIFECYCLE", "SUSPENDED", "PAUSED")
    wait_until(lambda: any(isinstance(p, DomainRecord) and p.uuid == uuid_of(2) and p.events
                           for _m, p in agent.payloads()), what="the suspend's record")
    assert {m: conn.count(m, uuid_of(2)) for m in ("XMLDesc", "state", "isPersistent", "domainListGetStats")} == \
        {"XMLDesc": 2, "state": 0, "isPersistent": 0, "domainListGetStats": 1}


def test_a_handle_offered_by_the_event_callback_saves_the_first_lookup():
    conn = FakeConnection([FakeDomain(uuid_of(1), "vm1"), FakeDomain(uuid_of(2), "vm2")])
    reader = SnapshotReader(FakeSession(conn), wall_clock_micros)
    assert reader.read(uuid_of(2)) is not None  # the reader now holds handles of this connection
    reader.offer(conn, uuid_of(1), conn.lookupByUUIDString(uuid_of(1)))
    before = conn.count("lookupByUUIDString", uuid_of(1))
    snap = reader.read(uuid_of(1))
    assert snap is not None and snap.name == "vm1"
    assert conn.count("lookupByUUIDString", uuid_of(1)) == before, "the offered handle was used"
    # A handle of another connection (before a reconnect) is never used: that domain is unknown here.
    other = FakeConnection([FakeDomain(uuid_of(3), "vm3")])
    reader.offer(other, uuid_of(3), other.lookupByUUIDString(uuid_of(3)))
    assert reader.read(uuid_of(3)) is None
    reader.forget(uuid_of(1))
    assert reader.read(uuid_of(1)) is not None and conn.count("lookupByUUIDString", uuid_of(1)) == before + 1


class _SwitchedPublisher(Publisher):
    """A real publisher whose Kafka the test says is away (as librdkafka's all-brokers-down would)."""

    away = False

    def kafka_problem(self) -> str | None:
        return "all Kafka brokers are down (test)" if self.away else super().kafka_problem()


def test_a_scheduled_resync_waits_while_kafka_is_away_then_runs_at_once(tmp_path, conn):
    producer = FakeProducer(auto_ack=True)
    publisher = _SwitchedPublisher({}, max_retry_backoff=0.05, producer_factory=producer.factory)
    publisher.start()
    store = StateStore(tmp_path / "state")
    pipeline = Pipeline(replace(CONFIG, resync_interval=0.2), WorkQueue(wall_clock_micros), FakeSession(conn),
                        SnapshotReader(FakeSession(conn), wall_clock_micros), store, publisher, CODEC, lambda: AGENT,
                        wall_clock_micros)
    pipeline.start()
    try:
        wait_until(lambda: pipeline.stats.resyncs_completed >= 2, what="scheduled resyncs")
        publisher.away = True
        wait_until(lambda: pipeline.stats.resyncs_deferred == 1, what="the due resync deferred")
        listings = conn.count("getAllDomainStats")
        # Several intervals pass: no listing, so no record per domain piles up in the producer.
        def no_listing() -> None:
            assert conn.count("getAllDomainStats") == listings

        hold(1.0, check=no_listing, interval=0.05)
        assert pipeline.stats.resyncs_deferred == 1, "one deferral for the whole outage"
        publisher.away = False
        wait_until(lambda: conn.count("getAllDomainStats") > listings, what="the deferred resync, once Kafka answers")
    finally:
        pipeline.stop()
        publisher.stop()
        store.close()
