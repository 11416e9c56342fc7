"""The resync over a fake libvirt host and a recording sink: what a listing queues, and the HostRecord's
heartbeat (at most one in flight; a status change sent as soon as the one in flight is acknowledged)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
from tests.fakes import FakeConnection, FakeDomain, FakeSession, RecordingSink, libvirt_error
from tests.fakes.records import AGENT, CODEC, DOMAINS, HOSTS, uuid_of

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

    assert setup.resync.start()

    batches = setup.queue.take(100, timeout=0)
    assert sorted(b.uuid for b in batches) == sorted([running.uuid, shut_off.uuid])
    assert len({b.resync_id for b in batches}) == 1 and batches[0].resync_id is not None
    assert not setup.ownership.owns(left_behind.uuid)
    assert not setup.ownership.owns(incoming.uuid)
    assert conn.count("jobStats", incoming.uuid) == 1, "the job is read only for PAUSED/MIGRATION"
    assert conn.count("jobStats", running.uuid) == 0


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
