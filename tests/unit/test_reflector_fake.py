"""The reflector against a fake consumer: when it reports synced, what it skips, how its position moves."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import KafkaError

from bridge.consumer.position import Position
from bridge.consumer.reflector import PollBatch, Reflector
from bridge.records import DomainRecord
from devenv import wait_until
from tests.fakes import FakeConsumer
from tests.fakes.records import CODEC, DOMAINS, HOSTS, domain, domain_message, host, host_message


class Batches:
    """The sink: every batch, in order, and a way to wait for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.all: list[PollBatch] = []

    def __call__(self, batch: PollBatch) -> None:
        with self._cond:
            self.all.append(batch)
            self._cond.notify_all()

    def wait_for(self, test: Callable[[PollBatch], bool], timeout: float = 5.0) -> PollBatch:
        with self._cond:
            found: list[PollBatch] = []

            def seen() -> bool:
                found[:] = [b for b in self.all if test(b)]
                return bool(found)

            assert self._cond.wait_for(seen, timeout), f"no such batch in {self.all}"
            return found[0]


def fake_topics(domain_partitions: int = 1) -> FakeConsumer:
    consumer = FakeConsumer()
    consumer.add_topic(DOMAINS, domain_partitions)
    consumer.add_topic(HOSTS, 1)
    return consumer


def put_domain(consumer: FakeConsumer, record: DomainRecord, partition: int = 0) -> int:
    return consumer.append(DOMAINS, partition, *domain_message(record))


@contextmanager
def reading(consumer: FakeConsumer, batch_size: int = 500,
            start: Position | None = None) -> Iterator[tuple[Reflector, Batches]]:
    sink = Batches()
    reflector = Reflector({}, CODEC, domains_topic=DOMAINS, hosts_topic=HOSTS, sink=sink, batch_size=batch_size,
                          start=start, poll_timeout=0.01, consumer_factory=consumer.factory)
    stop = threading.Event()
    thread = threading.Thread(target=reflector.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield reflector, sink
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()


def test_synced_only_once_the_position_reaches_every_watermark_seen_at_start():
    consumer = fake_topics(domain_partitions=2)
    for n in range(3):
        put_domain(consumer, domain(n, 10 + n), partition=0)
    put_domain(consumer, domain(3, 20), partition=1)
    consumer.append(HOSTS, 0, *host_message(host()))
    targets = {(DOMAINS, 0): 3, (DOMAINS, 1): 1, (HOSTS, 0): 1}

    with reading(consumer, batch_size=2) as (_reflector, sink):
        first_synced = sink.wait_for(lambda b: b.synced)
        # Written after start: beyond the targets, so not needed for the sync.
        put_domain(consumer, domain(4, 30), partition=1)
        sink.wait_for(lambda b: b.position.next_offset(DOMAINS, 1) == 2)

    index = sink.all.index(first_synced)
    assert index > 0, "the first batch (nothing read yet) must not be synced"
    for before in sink.all[:index]:
        assert not before.synced
        assert any(before.position.next_offset(t, p) < high for (t, p), high in targets.items())
    assert all(first_synced.position.next_offset(t, p) >= high for (t, p), high in targets.items())
    assert all(b.synced for b in sink.all[index:]), "synced stays True once reached"
    read = [p for b in sink.all for p in b.payloads]
    assert len(read) == 6


@pytest.mark.parametrize(("setting", "ours", "why"), [
    # librdkafka's 500 ms stalled a sync by half a second whenever its queue of fetched messages
    # filled and only partitions read to their end were fetched (measured: 2 syncs of 10).
    ("fetch.wait.max.ms", 100, "a fetch with nothing to return must wait at most 100 ms"),
    ("reconnect.backoff.ms", 10, "the bootstrap connection dropped under the first request held it 50 ms"),
    ("fetch.queue.backoff.ms", 20, "a full queue held the next fetch 1 s, and rebuilds read it dry"),
])
def test_the_readers_librdkafka_tuning_applies_unless_the_caller_says_otherwise(setting, ours, why):
    for client_config, expected in (({}, ours), ({setting: 500}, 500)):
        consumer = fake_topics()
        Reflector(client_config, CODEC, domains_topic=DOMAINS, hosts_topic=HOSTS, sink=Batches(),
                  consumer_factory=consumer.factory)
        assert consumer.config is not None and consumer.config[setting] == expected, why


def test_empty_topics_are_synced_at_once():
    consumer = fake_topics()
    with reading(consumer) as (_reflector, sink):
        first = sink.wait_for(lambda b: True)
    assert first.synced
    assert first.payloads == ()
    assert consumer.assign_calls == [[(DOMAINS, 0), (HOSTS, 0)]], "nothing to read anywhere: all at once"


def test_partitions_are_assigned_at_their_low_watermark_or_the_start_position():
    # Concrete offsets, never OFFSET_BEGINNING: librdkafka would look each up on its own, and an
    # empty partition found first would be fetched alone, waiting out fetch.wait.max.ms.
    consumer = fake_topics(domain_partitions=2)
    put_domain(consumer, domain(1, 5), partition=0)
    put_domain(consumer, domain(2, 6), partition=0)
    consumer.skip(DOMAINS, 1, 4)  # its log starts at 4 (retention took 0-3)
    put_domain(consumer, domain(3, 7), partition=1)

    with reading(consumer, start=Position({(DOMAINS, 0): 1})) as (_reflector, sink):
        sink.wait_for(lambda b: b.synced)

    assert sorted(consumer.assigned or []) == [(DOMAINS, 0, 1), (DOMAINS, 1, 4), (HOSTS, 0, 0)]
    assert sorted((s.partition, s.offset) for b in sink.all for s in b.sources) == [(0, 1), (1, 4)]


def test_partitions_with_nothing_to_read_are_assigned_after_the_first_poll_and_then_read():
    # Assigned with the others, such a partition could be fetched first and alone, holding the first
    # fetch for fetch.wait.max.ms (one start in four against a real broker).
    consumer = fake_topics(domain_partitions=2)
    put_domain(consumer, domain(1, 5), partition=0)
    consumer.skip(DOMAINS, 1, 3)  # nothing to read: its log starts at its end

    with reading(consumer) as (_reflector, sink):
        sink.wait_for(lambda b: b.synced)
        later = domain(2, 6)
        put_domain(consumer, later, partition=1)
        sink.wait_for(lambda b: later in b.payloads)

    assert consumer.assign_calls == [[(DOMAINS, 0)], [(DOMAINS, 1), (HOSTS, 0)]]
    assert sorted(consumer.assigned or []) == [(DOMAINS, 0, 0), (DOMAINS, 1, 3), (HOSTS, 0, 0)]


def test_undecodable_bytes_are_counted_and_skipped_and_the_position_still_advances():
    consumer = fake_topics()
    consumer.append(DOMAINS, 0, b"not-a-uuid", b"\x00garbage")
    good = domain(1, 5)
    put_domain(consumer, good)
    consumer.append(DOMAINS, 0, good.uuid.encode(), b"\xc3\x01" + b"\x00" * 8 + b"junk")

    with reading(consumer) as (reflector, sink):
        done = sink.wait_for(lambda b: b.position.next_offset(DOMAINS, 0) == 3 and b.synced)
        counters = reflector.counters()

    assert counters.undecodable == 2
    payloads = [p for b in sink.all for p in b.payloads]
    assert payloads == [good], "only the record is handed on"
    assert done.position.next_offset(DOMAINS, 0) == 3


def test_an_undecodable_message_alone_still_moves_the_position():
    consumer = fake_topics()
    consumer.append(DOMAINS, 0, b"k", b"garbage")
    with reading(consumer) as (reflector, sink):
        # Wait for the message's batch itself (before its partition's EOF can move the position).
        moved = sink.wait_for(lambda b: b.position.next_offset(DOMAINS, 0) == 1)
        assert reflector.counters().undecodable == 1
    assert moved.payloads == ()


def test_partition_eof_advances_the_position_past_offsets_without_messages():
    consumer = fake_topics()
    put_domain(consumer, domain(1, 5))
    consumer.skip(DOMAINS, 0, 4)  # e.g. transaction markers, or compacted away: end offset 5
    with reading(consumer) as (_reflector, sink):
        synced = sink.wait_for(lambda b: b.synced, timeout=3)
    # Only the EOF says the end is 5: the one message is at offset 0.
    assert synced.position.next_offset(DOMAINS, 0) == 5
    assert [s.offset for b in sink.all for s in b.sources] == [0]


def test_errors_that_are_not_fatal_are_shown_and_reading_goes_on():
    consumer = fake_topics()
    with reading(consumer) as (reflector, sink):
        sink.wait_for(lambda b: b.synced)
        consumer.inject_error(KafkaError._TRANSPORT)
        wait_until(lambda: reflector.last_error is not None, timeout=3, what="the error shown", interval=0.01)
        put_domain(consumer, domain(1, 5))
        sink.wait_for(lambda b: len(b.payloads) == 1)
        assert reflector.last_error is None, "a message read clears the error"
