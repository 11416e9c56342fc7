"""Re-assertion across hosts (:mod:`bridge.agent.reassert`), over a fake host and producer behind the real
publisher: a host that hands a domain off asks its owner to publish it again only once its own record
of it is acknowledged, naming that record's version; the host that holds a domain answers such a
request with a record above that version (ahead by the clock bound for a request without one); nobody
else does; and every host keeps its clock above the versions it reads, so a claim made after a request
outranks the requester's record too. The same across real hosts and a real cluster: ``tests/fleet``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import libvirt
import pytest

from bridge.agent.pipeline import Pipeline
from bridge.agent.pipeline_config import PipelineConfig
from bridge.agent.publisher import Message, Publisher
from bridge.agent.reassert import plausible_ahead_us
from bridge.agent.snapshot import SnapshotReader
from bridge.agent.state_store import StateStore
from bridge.agent.work_queue import WorkQueue
from bridge.core.version_clock import wall_clock_micros
from bridge.errors import DecodeError
from bridge.records import DomainEvent, DomainRecord, HostRecord, RecordKind
from bridge.signals import ReassertSignal, ResyncSignal, decode_signal
from devenv import hold, wait_until
from tests.fakes import FakeConnection, FakeDomain, FakeProducer, FakeSession, Produced, decode
from tests.fakes.records import AGENT, CODEC, DOMAINS, HOSTS, uuid_of

CONTROL = "libvirt.control"
SKEW = 0.05
CONFIG = PipelineConfig(host="hv1", domains_topic=DOMAINS, hosts_topic=HOSTS, resync_interval=3600,
                        heartbeat_interval=3600, snapshot_readers=2, max_clock_skew=SKEW, control_topic=CONTROL)


@dataclass
class Host:
    pipeline: Pipeline
    queue: WorkQueue
    producer: FakeProducer
    conn: FakeConnection

    def signals(self) -> list[tuple[Produced, ReassertSignal]]:
        out = []
        for m in self.producer.produced:
            if m.topic == CONTROL:
                signal = decode_signal(m.key, m.value)
                assert isinstance(signal, ReassertSignal)
                out.append((m, signal))
        return out

    def records(self, start: int = 0) -> list[tuple[Produced, DomainRecord]]:
        out = []
        for m in self.producer.produced[start:]:
            if m.topic == DOMAINS and m.value is not None:
                payload = decode(Message(m.topic, m.key, m.value, tuple(m.headers)))  # type: ignore[arg-type]
                assert isinstance(payload, DomainRecord)
                out.append((m, payload))
        return out

    def event(self, uuid: str, type_: str, detail: str) -> None:
        self.queue.add_event(uuid, f"vm-{uuid[-2:]}", DomainEvent("LIFECYCLE", wall_clock_micros(), type_, detail))

    def settle(self) -> None:
        """Wait for the start-up resync's inventory and acknowledge everything so far."""
        self.producer.wait_produced(2)
        self.producer.ack_all()

        def inventory() -> bool:
            self.producer.ack_all()
            for m in self.producer.produced:
                if m.topic == HOSTS and m.value is not None:
                    payload = decode(Message(m.topic, m.key, m.value, tuple(m.headers)))  # type: ignore[arg-type]
                    if isinstance(payload, HostRecord) and payload.resync_id:
                        return True
            return False
        wait_until(inventory, timeout=5, what="the start-up inventory", interval=0.01)
        self.producer.ack_all()


@pytest.fixture
def host(tmp_path) -> Iterator[Host]:
    yield from running_host(tmp_path, CONFIG)


@pytest.fixture
def wide_skew_host(tmp_path) -> Iterator[Host]:
    """A host whose claims are 10 s ahead: a margin that shows in a version, however slow the box."""
    yield from running_host(tmp_path, replace(CONFIG, max_clock_skew=10.0))


def running_host(tmp_path, config: PipelineConfig) -> Iterator[Host]:
    conn = FakeConnection([FakeDomain(uuid_of(1), "vm-01")])
    producer = FakeProducer(auto_ack=False)
    publisher = Publisher({}, max_retry_backoff=0.05, producer_factory=producer.factory)
    publisher.start()
    store = StateStore(tmp_path / "state")
    queue = WorkQueue(wall_clock_micros)
    session = FakeSession(conn)
    pipeline = Pipeline(config, queue, session, SnapshotReader(session, wall_clock_micros), store, publisher,
                        CODEC, lambda: AGENT, wall_clock_micros)
    pipeline.start()
    try:
        yield Host(pipeline, queue, producer, conn)
    finally:
        pipeline.stop()
        publisher.stop()
        store.close()


def quiet_window() -> None:
    # A negative check with no state to wait on: the hand-off sits in the queue behind a record in
    # flight, invisible to the re-assertion until that record is acknowledged.
    hold(0.3)


def test_a_source_asks_for_re_assertion_only_after_its_last_record_is_acknowledged(host):
    domain = uuid_of(1)
    host.settle()
    host.event(domain, "SUSPENDED", "PAUSED")  # owned: a record, left in flight
    in_flight = host.producer.wait_produced(len(host.producer.produced) + 1)[-1]
    ((_m, last),) = host.records(in_flight.index)
    host.event(domain, "SUSPENDED", "MIGRATED")  # the hand-off, queued behind that record
    quiet_window()
    assert host.signals() == [], "asked before the source's own record was acknowledged"

    host.producer.ack(in_flight.index)
    wait_until(host.signals, timeout=5, what="the re-assertion request", interval=0.01)
    ((message, signal),) = host.signals()
    assert message.index > in_flight.index
    assert (signal.uuid, signal.requested_by, signal.after) == (domain, "hv1", (0, in_flight.index))
    assert signal.version == last.version
    assert message.key == f"domain/{domain}".encode()
    assert signal.requested_at >= last.version - int(SKEW * 1e6)
    assert not host.pipeline.ownership.owns(domain)
    host.producer.ack_all()
    wait_until(host.queue.idle, timeout=5, what="nothing left to publish", interval=0.01)
    assert len(host.signals()) == 1, "one request per hand-off"


def test_the_host_that_holds_the_domain_publishes_it_again_ahead_by_the_clock_bound(host):
    domain = uuid_of(1)
    host.settle()
    start = len(host.producer.produced)
    asked_at = wall_clock_micros()
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, asked_at, "hv2"))
    wait_until(lambda: host.records(start), timeout=5, what="the re-asserted record", interval=0.01)
    ((_m, record),) = host.records(start)
    assert record.kind is RecordKind.RESYNC and record.host == "hv1" and record.state == "RUNNING"
    assert record.version >= asked_at + int(SKEW * 1e6), "not versioned as a claim"
    assert host.pipeline.reasserter.answered == 1


def test_a_request_for_a_domain_not_held_here_or_sent_by_this_host_is_ignored(host):
    host.settle()
    start = len(host.producer.produced)
    host.pipeline.reasserter.requested(ReassertSignal.new(uuid_of(9), wall_clock_micros(), "hv2"))  # not here
    host.pipeline.reasserter.requested(ReassertSignal.new(uuid_of(1), wall_clock_micros(), "hv1"))  # our own
    wait_until(lambda: host.pipeline.reasserter.judged == 2, timeout=5, what="both requests judged", interval=0.01)
    assert host.queue.idle()
    assert host.records(start) == []
    assert host.pipeline.reasserter.answered == 0


def test_a_handed_off_domain_is_not_published_again_on_request(host):
    domain = uuid_of(1)
    host.settle()
    host.event(domain, "SUSPENDED", "MIGRATED")
    wait_until(host.signals, timeout=5, what="the re-assertion request", interval=0.01)
    host.producer.ack_all()
    start = len(host.producer.produced)
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, wall_clock_micros(), "hv2"))
    wait_until(lambda: host.pipeline.reasserter.judged == 1, timeout=5, what="the request judged", interval=0.01)
    assert host.queue.idle()
    assert host.records(start) == []


def test_signals_round_trip_and_bad_ones_name_the_problem():
    reassert = ReassertSignal.new(uuid_of(3), 17, "hv2")
    assert decode_signal(reassert.key(), reassert.value()) == reassert
    placed = ReassertSignal.new(uuid_of(3), 17, "hv2", (2, 40), 1_800_000_000_000_000)
    assert decode_signal(placed.key(), placed.value()) == placed
    # An older agent's request names no version: read as None, answered with a claim's margin.
    older = {"type": "reassert", "uuid": uuid_of(3), "id": "x", "requested_at": 17, "partition": 2, "offset": 40}
    read = decode_signal(placed.key(), json.dumps(older).encode())
    assert isinstance(read, ReassertSignal) and read.after == (2, 40) and read.version is None
    resync = ResyncSignal.new("hv1", 18, "ops")
    assert decode_signal(resync.key(), resync.value()) == resync
    with pytest.raises(DecodeError, match="sent under key"):
        decode_signal(b"domain/" + uuid_of(4).encode(), reassert.value())
    bad = replace(reassert, uuid="Not-A-UUID")
    with pytest.raises(DecodeError, match="not a lower-case domain UUID"):
        decode_signal(bad.key(), bad.value())
    with pytest.raises(DecodeError, match="valid 'requested_at'"):
        decode_signal(None, json.dumps({"type": "reassert", "uuid": uuid_of(1), "id": "x"}).encode())


def test_a_post_copy_destination_whose_domain_died_answers_no_request_and_yields(host):
    # Recorded on the fleet: the source's request reached the destination after its QEMU died; its
    # answer read SHUTOFF/CRASHED and, published, outranked the source's take-back.
    domain = uuid_of(1)
    host.settle()
    before = len(host.producer.produced)
    host.event(domain, "STARTED", "MIGRATED")
    host.event(domain, "RESUMED", "POSTCOPY")  # a claim (role POSTCOPY_IN), published
    wait_until(lambda: host.records(before), timeout=5, what="the claim", interval=0.01)
    ((_m, claim),) = host.records(before)
    assert [e.label() for e in claim.events] == ["RESUMED/POSTCOPY"] and host.pipeline.ownership.provisional(domain)
    host.producer.ack_all()
    dom = host.conn.lookupByUUIDString(domain)
    dom.dom_state, dom.dom_reason = libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
    start = len(host.producer.produced)
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, wall_clock_micros(), "hv2"))
    wait_until(lambda: not host.pipeline.ownership.owns(domain), timeout=5, what="the claim revoked",
               interval=0.01)
    wait_until(host.signals, timeout=5, what="its own request for re-assertion", interval=0.01)
    assert host.records(start) == [], "published a record of a domain that no longer runs here"


def test_an_owner_whose_newest_record_already_sits_after_the_requesters_does_not_publish_again(host):
    domain = uuid_of(1)
    host.settle()
    ((mine, _record),) = host.records()  # the listing's RESYNC record: this host's newest of the domain
    start = len(host.producer.produced)
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, wall_clock_micros(), "hv2", (0, mine.index - 1)))
    wait_until(lambda: host.pipeline.reasserter.already_last == 1, timeout=5, what="the request judged",
               interval=0.01)
    assert host.records(start) == []
    # The requester's record landed after ours: publish again, above it.
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, wall_clock_micros(), "hv2", (0, mine.index + 1)))
    wait_until(lambda: host.records(start), timeout=5, what="the re-asserted record", interval=0.01)
    assert host.pipeline.reasserter.answered == 1


def test_a_request_waits_for_the_owners_record_in_flight_before_it_is_judged(host):
    domain = uuid_of(1)
    host.settle()
    host.event(domain, "SUSPENDED", "PAUSED")
    in_flight = host.producer.wait_produced(len(host.producer.produced) + 1)[-1]
    asked = ReassertSignal.new(domain, wall_clock_micros(), "hv2", (0, in_flight.index - 1))
    host.pipeline.reasserter.requested(asked)
    wait_until(lambda: host.pipeline.reasserter.deferred == 1, timeout=5, what="the request deferred", interval=0.01)
    assert (host.pipeline.reasserter.answered, host.pipeline.reasserter.already_last) == (0, 0), "judged too early"
    host.producer.ack(in_flight.index)  # it lands after the requester's record: nothing more to publish
    wait_until(lambda: host.pipeline.reasserter.already_last == 1, timeout=5, what="the request judged",
               interval=0.01)
    assert host.records(in_flight.index + 1) == []


def test_an_answer_goes_above_the_requesters_version_without_the_claims_margin(wide_skew_host):
    # The margin is for a record whose predecessor's version is unknown; a known one is outranked
    # exactly, so an answer never sits a clock bound ahead of this host's clock.
    host = wide_skew_host
    domain = uuid_of(1)
    host.settle()
    ((_m, listed),) = host.records()
    start = len(host.producer.produced)
    theirs = listed.version + 1_000  # above this host's last record, below its clock
    asked = wall_clock_micros()
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, asked, "hv2", (0, 0), theirs))
    wait_until(lambda: host.records(start), timeout=5, what="the re-asserted record", interval=0.01)
    ((_m, record),) = host.records(start)
    assert record.version > theirs
    assert record.version < asked + 10_000_000, "versioned ahead by the claim's margin (10 s here)"
    # Without a version the answer still takes the margin: the requester's record could be that far ahead.
    again = len(host.producer.produced)
    host.producer.ack_all()
    asked = wall_clock_micros()
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, asked, "hv2"))
    wait_until(lambda: host.records(again), timeout=5, what="the second re-asserted record", interval=0.01)
    ((_m, record),) = host.records(again)
    assert record.version >= asked + 10_000_000


def test_an_owner_whose_newest_record_sits_after_the_requesters_but_below_its_version_publishes_again(host):
    # Compaction keeps the later offset, consumers the higher version: both must be the owner's.
    domain = uuid_of(1)
    host.settle()
    ((mine, record),) = host.records()
    start = len(host.producer.produced)
    theirs = record.version + 500_000
    host.pipeline.reasserter.requested(ReassertSignal.new(domain, wall_clock_micros(), "hv2",
                                                          (0, mine.index - 1), theirs))
    wait_until(lambda: host.records(start), timeout=5, what="the re-asserted record", interval=0.01)
    ((_m, again),) = host.records(start)
    assert again.version > theirs
    assert (host.pipeline.reasserter.answered, host.pipeline.reasserter.already_last) == (1, 0)


def test_a_claim_made_after_a_request_it_could_not_answer_outranks_the_requesters_record(host):
    # Recorded on the fleet (seed 4089125771): the source's request after its hand-off reached the
    # destination before its claim; the claim, a clock bound ahead of a clock 45 ms behind, sorted
    # below the source's last record, itself an answer versioned ahead of a clock that was ahead.
    incoming = uuid_of(2)
    host.settle()
    dom = host.conn.add(FakeDomain(incoming, "vm-02", libvirt.VIR_DOMAIN_PAUSED,
                                   libvirt.VIR_DOMAIN_PAUSED_MIGRATION, persistent=False, domain_id=2))
    host.event(incoming, "STARTED", "MIGRATED")
    wait_until(lambda: not host.pipeline.ownership.owns(incoming), timeout=5, what="the domain incoming",
               interval=0.01)
    theirs = wall_clock_micros() + plausible_ahead_us(SKEW) - 100_000
    host.pipeline.reasserter.requested(ReassertSignal.new(incoming, wall_clock_micros(), "hv2", (1, 7), theirs))
    wait_until(lambda: host.pipeline.reasserter.judged == 1, timeout=5, what="the request judged", interval=0.01)
    assert host.pipeline.reasserter.answered == 0, "answered a request for a domain it does not hold yet"
    assert host.pipeline.clock.last >= theirs, "the request's version was not observed"
    start = len(host.producer.produced)
    dom.dom_state, dom.dom_reason = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED
    host.event(incoming, "RESUMED", "MIGRATED")
    wait_until(lambda: host.records(start), timeout=5, what="the claim", interval=0.01)
    ((_m, claim),) = host.records(start)
    assert [e.label() for e in claim.events] == ["RESUMED/MIGRATED"] and claim.host == "hv1"
    assert claim.version > theirs, "the claim sorts below the record the request named"


def test_a_version_implausibly_far_ahead_is_not_observed(host):
    domain = uuid_of(1)
    host.settle()
    start = len(host.producer.produced)
    wild = wall_clock_micros() + plausible_ahead_us(SKEW) + 3_600_000_000  # corrupt, or a clock an hour off
    host.pipeline.reasserter.requested(ReassertSignal.new(uuid_of(9), wall_clock_micros(), "hv2", None, wild))
    wait_until(lambda: host.pipeline.reasserter.judged == 1, timeout=5, what="the request judged", interval=0.01)
    assert host.pipeline.reasserter.implausible == 1
    host.event(domain, "SUSPENDED", "PAUSED")
    wait_until(lambda: host.records(start), timeout=5, what="the next record", interval=0.01)
    ((_m, record),) = host.records(start)
    assert record.version < wild - 3_600_000_000, "this host's versions were carried into the future"
    assert host.pipeline.reasserter.implausible == 1, "counted more than once"


def test_an_answer_to_a_request_too_far_ahead_to_observe_takes_the_claims_margin(wide_skew_host):
    host = wide_skew_host
    host.settle()
    start = len(host.producer.produced)
    asked = wall_clock_micros()
    wild = asked + plausible_ahead_us(10.0) + 60_000_000
    host.pipeline.reasserter.requested(ReassertSignal.new(uuid_of(1), asked, "hv2", (0, 0), wild))
    wait_until(lambda: host.records(start), timeout=5, what="the re-asserted record", interval=0.01)
    ((_m, record),) = host.records(start)
    assert host.pipeline.reasserter.implausible == 1
    assert record.version >= asked + 10_000_000, "not versioned as a claim"
