"""The resync over a fake libvirt host and a recording sink: what a listing queues, and the HostRecord's
heartbeat (at most one in flight; a status change sent as soon as the one in flight is acknowledged)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import libvirt
import pytest

from bridge.agent.pipeline_config import PipelineConfig, PipelineStats
from bridge.agent.resync import Resync
from bridge.agent.snapshot import SnapshotReader
from bridge.agent.state_store import StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.ownership import Ownership
from bridge.core.version_clock import VersionClock, wall_clock_micros
from bridge.records import HostRecord, HostStatus
from bridge.serde import Heartbeat
from tests.fakes import FakeConnection, FakeDomain, FakeSession, RecordingSink, libvirt_error
from tests.fakes.records import AGENT, CODEC, DOMAINS, HEARTBEATS, HOSTS, uuid_of

CONFIG = PipelineConfig(host="hv1", domains_topic=DOMAINS, hosts_topic=HOSTS, resync_interval=3600,
                        heartbeat_interval=3600)


@dataclass
class Setup:
    resync: Resync
    sink: RecordingSink
    queue: WorkQueue
    session: FakeSession
    ownership: Ownership

    def host_records(self) -> list[HostRecord]:
        out = []
        for sequence in self.sink.published:
            (payload,) = sequence.payloads
            assert isinstance(payload, HostRecord)
            out.append(payload)
        return out


@pytest.fixture
def conn() -> FakeConnection:
    return FakeConnection()


@pytest.fixture
def setup(tmp_path, conn) -> Iterator[Setup]:
    store = StateStore(tmp_path / "state")
    sink = RecordingSink()
    queue = WorkQueue(wall_clock_micros)
    session = FakeSession(conn)
    clock = VersionClock(wall_clock_micros)
    ownership = Ownership()
    resync = Resync(CONFIG, session, SnapshotReader(session, wall_clock_micros), queue, store, sink, CODEC, clock,
                    ownership, PipelineStats(),
                    lambda: AGENT, wall_clock_micros, lambda: None)
    yield Setup(resync, sink, queue, session, ownership)
    store.close()


# -- the listing ---------------------------------------------------------------------------------------


def test_a_listing_queues_a_resync_record_for_each_owned_domain_only(setup, conn):
    running = conn.add(FakeDomain(uuid_of(1), "running"))
    shut_off = conn.add(FakeDomain(uuid_of(2), "off", libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN))
    left_behind = conn.add(FakeDomain(uuid_of(3), "migrated-away", libvirt.VIR_DOMAIN_SHUTOFF,
                                      libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED))
    incoming = conn.add(FakeDomain(
        uuid_of(4), "incoming", libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
        job=libvirt_error(libvirt.VIR_ERR_OPERATION_UNSUPPORTED, "available only on the source host")))
    # Both start up paused: an incoming migration's destination before STARTED/MIGRATED, and a local start.
    arriving = conn.add(FakeDomain(
        uuid_of(5), "arriving", libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
        job=libvirt_error(libvirt.VIR_ERR_OPERATION_UNSUPPORTED, "available only on the source host")))
    booting = conn.add(FakeDomain(uuid_of(6), "booting", libvirt.VIR_DOMAIN_PAUSED,
                                  libvirt.VIR_DOMAIN_PAUSED_STARTING_UP))

    assert setup.resync.start()

    batches = setup.queue.take(100, timeout=0)
    assert sorted(b.uuid for b in batches) == sorted([running.uuid, shut_off.uuid, booting.uuid])
    assert len({b.resync_id for b in batches}) == 1 and batches[0].resync_id is not None
    assert not setup.ownership.owns(left_behind.uuid)
    assert not setup.ownership.owns(incoming.uuid)
    assert not setup.ownership.owns(arriving.uuid), "an incoming domain starting up was taken for this host's"
    for dom in (incoming, arriving, booting):
        assert conn.count("jobStats", dom.uuid) == 1, "the job is read for PAUSED/MIGRATION and STARTING_UP"
    assert conn.count("jobStats", running.uuid) == 0, "the job is read only where it decides"


def test_a_connection_lost_during_the_listing_fails_the_resync_and_reports_the_connection(setup, conn):
    conn.add(FakeDomain(uuid_of(1), "vm1"))
    conn.lose()
    assert not setup.resync.start()
    assert setup.session.marked_lost == 1
    assert setup.queue.take(100, timeout=0) == []


def test_no_connection_fails_the_resync_quietly(setup):
    setup.session.mark_lost()
    setup.session.marked_lost = 0
    assert not setup.resync.start()
    assert setup.session.marked_lost == 0


def test_an_empty_host_publishes_its_empty_inventory_at_once(setup):
    assert setup.resync.start()
    (record,) = setup.host_records()
    assert record.resync_id is not None
    assert record.domains == ()


# -- the HostRecord's heartbeat --------------------------------------------------------------------------


def test_at_most_one_host_record_is_in_flight(setup):
    setup.resync.heartbeat(HostStatus.UP)
    assert len(setup.sink.published) == 1
    for _ in range(3):
        setup.resync.next_heartbeat = 0.0  # due
        setup.resync.heartbeat(HostStatus.UP)
    assert len(setup.sink.published) == 1, "a due heartbeat waits while the last one is in flight"

    setup.sink.ack(0)
    setup.resync.next_heartbeat = 0.0
    setup.resync.heartbeat(HostStatus.UP)
    assert len(setup.sink.published) == 2


def test_a_status_change_is_sent_as_soon_as_the_one_in_flight_is_acked(setup):
    setup.resync.heartbeat(HostStatus.UP)
    setup.resync.heartbeat(HostStatus.LIBVIRT_UNREACHABLE)
    assert [r.status for r in setup.host_records()] == [HostStatus.UP], "held back behind the one in flight"

    setup.sink.ack(0)
    setup.resync.heartbeat(HostStatus.LIBVIRT_UNREACHABLE)  # not due by the interval: sent for the change
    assert [r.status for r in setup.host_records()] == [HostStatus.UP, HostStatus.LIBVIRT_UNREACHABLE]

    setup.sink.ack(1)
    setup.resync.heartbeat(HostStatus.LIBVIRT_UNREACHABLE)
    assert len(setup.sink.published) == 2, "no change and not due: nothing sent"


def test_stopping_and_a_new_inventory_are_not_held_back(setup):
    setup.resync.heartbeat(HostStatus.UP)
    assert setup.resync.start()  # empty host: the inventory is complete at once
    assert setup.resync.publish_host(HostStatus.STOPPING)
    records = setup.host_records()
    assert [r.status for r in records] == [HostStatus.UP, HostStatus.UP, HostStatus.STOPPING]
    assert records[0].resync_id is None and records[1].resync_id is not None


# -- heartbeats on their own topic -----------------------------------------------------------------------

BEATS_CONFIG = replace(CONFIG, heartbeats_topic=HEARTBEATS, heartbeat_interval=10, resync_interval=300)


@pytest.fixture
def beats(tmp_path, conn) -> Iterator[Setup]:
    store = StateStore(tmp_path / "state")
    sink = RecordingSink()
    session = FakeSession(conn)
    ownership = Ownership()
    queue = WorkQueue(wall_clock_micros)
    resync = Resync(BEATS_CONFIG, session, SnapshotReader(session, wall_clock_micros), queue, store, sink, CODEC,
                    VersionClock(wall_clock_micros), ownership, PipelineStats(), lambda: AGENT, wall_clock_micros,
                    lambda: None)
    yield Setup(resync, sink, queue, session, ownership)
    store.close()


def _published(setup: Setup) -> list[tuple[str, HostRecord]]:
    """(topic, record) of every message, in order: the hosts topic's HostRecords and the heartbeats."""
    out: list[tuple[str, HostRecord]] = []
    for sequence in setup.sink.published:
        for message, payload in zip(sequence.messages, sequence.payloads, strict=True):
            record = payload.record if isinstance(payload, Heartbeat) else payload
            assert isinstance(record, HostRecord)
            out.append((message.topic, record))
    return out


def test_heartbeats_leave_the_inventory_out_and_the_host_record_comes_once_per_resync_interval(beats, conn):
    conn.add(FakeDomain(uuid_of(1), "vm1", libvirt.VIR_DOMAIN_RUNNING, 1))
    assert beats.resync.start()
    (batch,) = beats.queue.take(100, timeout=0)
    beats.resync.assigned(batch, 100)
    beats.queue.done(batch.uuid, batch.resync_id)
    beats.resync.handle_acks()
    first, beat = _published(beats)
    assert first[0] == HOSTS and [e.uuid for e in first[1].domains] == [uuid_of(1)]
    assert first[1].heartbeat_interval_ms == 300_000, "readers of the hosts topic alone judge it by its refresh"
    assert beat[0] == HEARTBEATS and beat[1].domains == () and beat[1].listed_at is None
    assert (beat[1].resync_id, beat[1].heartbeat_interval_ms) == (first[1].resync_id, 10_000)
    assert beat[1].heartbeat_at == first[1].heartbeat_at
    for i in range(len(beats.sink.published)):
        beats.sink.ack(i)

    beats.resync.next_heartbeat = 0.0  # due; the HostRecord's refresh is not
    beats.resync.heartbeat(HostStatus.UP)
    assert [t for t, _ in _published(beats)][2:] == [HEARTBEATS]
    beats.resync.heartbeat(HostStatus.UP)
    assert len(_published(beats)) == 3, "not due: nothing"
    beats.resync.next_heartbeat = 0.0
    beats.resync.heartbeat(HostStatus.UP)
    assert len(_published(beats)) == 3, "at most one heartbeat in flight"

    beats.sink.ack(len(beats.sink.published) - 1)
    beats.resync.heartbeat(HostStatus.LIBVIRT_UNREACHABLE)  # a change: both, at once
    assert [(t, r.status) for t, r in _published(beats)][3:] == [(HOSTS, HostStatus.LIBVIRT_UNREACHABLE),
                                                                 (HEARTBEATS, HostStatus.LIBVIRT_UNREACHABLE)]
    assert beats.resync.publish_host(HostStatus.STOPPING)  # not held back by either in flight
    assert [(t, r.status) for t, r in _published(beats)][5:] == [(HOSTS, HostStatus.STOPPING),
                                                                 (HEARTBEATS, HostStatus.STOPPING)]
