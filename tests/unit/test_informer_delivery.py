"""The informer over a fake consumer: what a handler or a watch is given, and when."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError

from bridge.consumer import ChangeType, ConsumerError, Informer, KafkaSettings, Watch
from bridge.consumer.changes import Change
from bridge.records import DomainRecord
from devenv import wait_until
from tests.fakes import FakeConsumer
from tests.fakes.records import CODEC, DOMAINS, HOSTS, domain, domain_message, host, host_message
from tests.support.agent_proc import wait_for


@pytest.fixture
def log() -> FakeConsumer:
    consumer = FakeConsumer()
    consumer.add_topic(DOMAINS, 2)
    consumer.add_topic(HOSTS, 1)
    consumer.append(HOSTS, 0, *host_message(host()))
    return consumer


def write(log: FakeConsumer, record: DomainRecord) -> int:
    return log.append(DOMAINS, record_partition(record), *domain_message(record))


def record_partition(record: DomainRecord) -> int:
    return int(record.uuid[-1]) % 2  # a fixed partition per domain, as keys are in Kafka


@pytest.fixture
def informer(log: FakeConsumer) -> Iterator[Informer]:
    informer = Informer(KafkaSettings(domains_topic=DOMAINS, hosts_topic=HOSTS), codec=CODEC,
                        consumer_factory=log.factory)
    yield informer
    informer.stop(timeout=5)


def wait_applied(informer: Informer, log: FakeConsumer, offsets: dict[int, int]) -> None:
    """Wait until the view's position covers ``offsets`` (domains partition → last offset written)."""
    wait_until(lambda: all(informer.position.next_offset(DOMAINS, p) > o for p, o in offsets.items()),
               timeout=5, what=f"the view's position to cover {offsets}", interval=0.01)


class Calls:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seen: list[tuple[str, str, int | None, int | None]] = []

    def add(self, kind: str, old: DomainRecord | None, new: DomainRecord | None) -> None:
        record = new or old
        assert record is not None
        with self._cond:
            self.seen.append((kind, record.uuid, old.version if old else None, new.version if new else None))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[tuple[str, str, int | None, int | None]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.seen) >= count, timeout), self.seen
            return list(self.seen)


@pytest.mark.parametrize("registered", ["before_sync", "after_sync"])
def test_a_handler_first_gets_the_synced_view_as_adds_then_updates(log, informer, registered):
    a, b = domain(1, 10), domain(2, 20)
    write(log, a)
    write(log, b)
    calls = Calls()

    def register() -> None:
        informer.add_handler(on_add=lambda new: calls.add("add", None, new),
                             on_update=lambda old, new: calls.add("update", old, new),
                             on_delete=lambda old: calls.add("delete", old, None))

    if registered == "before_sync":
        register()
    informer.start()
    assert informer.wait_for_sync(5)
    if registered == "after_sync":
        register()
    # The adds must be taken before the update is written: a change still waiting when the next of
    # its domain arrives is merged with it (level-triggered), which a slow handler thread would see.
    calls.wait(2)
    write(log, domain(1, 11))

    seen = calls.wait(3)
    assert sorted(seen[:2]) == [("add", a.uuid, None, 10), ("add", b.uuid, None, 20)]
    assert seen[2] == ("update", a.uuid, 10, 11)
    assert len(seen) == 3


def test_watch_from_a_snapshots_position_gives_nothing_twice_and_misses_nothing(log, informer):
    for n in range(4):
        write(log, domain(n, 10))
    informer.start()
    assert informer.wait_for_sync(5)
    # Changes applied before the snapshot: in the view, and in the history watch_from replays from.
    last = {record_partition(r): write(log, r) for r in (domain(0, 11), domain(1, 11))}
    wait_applied(informer, log, last)
    snapshot = informer.list()
    assert snapshot.domains[domain(0, 0).uuid].version == 11
    # Changes after the snapshot, applied before watch_from is called: only the history has them.
    gap = [domain(2, 12), domain(3, 12), domain(4, 12)]
    wait_applied(informer, log, {record_partition(r): write(log, r) for r in gap})

    with informer.watch_from(snapshot.position, timeout=0.3) as watch:
        later = domain(5, 13)
        write(log, later)
        changes: list[Change] = list(watch)

    got = [(c.type, c.uuid, c.record.version) for c in changes]
    expected = [(ChangeType.UPDATED, domain(2, 0).uuid, 12), (ChangeType.UPDATED, domain(3, 0).uuid, 12),
                (ChangeType.ADDED, domain(4, 0).uuid, 12), (ChangeType.ADDED, later.uuid, 13)]
    assert sorted(got) == sorted(expected), "exactly the changes after the snapshot, each once"
    assert all(c.source is not None and not snapshot.position.covers(c.source) for c in changes)


def test_a_slow_reader_gets_the_changes_to_one_domain_merged(log, informer):
    write(log, domain(1, 10))
    informer.start()
    assert informer.wait_for_sync(5)
    with informer.watch_from(informer.list().position, timeout=0.3) as watch:
        # The reader is not reading while three updates are applied.
        last = [write(log, domain(1, v)) for v in (11, 12, 13)][-1]
        wait_applied(informer, log, {record_partition(domain(1, 0)): last})
        changes = list(watch)

    assert len(changes) == 1
    merged = changes[0]
    assert merged.type is ChangeType.UPDATED
    assert merged.old is not None and merged.old.version == 10, "old is what the reader last knew"
    assert merged.new is not None and merged.new.version == 13, "new is the latest"


def test_lag_is_reported_per_partition_and_is_zero_once_caught_up(log, informer):
    for n in range(3):
        write(log, domain(n, 10))
    assert informer.lag() == {}, "no reader yet, nothing to report"
    informer.start()
    assert informer.wait_for_sync(5)
    wait_for(lambda: informer.lag() and set(informer.lag().values()) == {0}, 5, "caught-up lag")
    assert set(informer.lag()) == set(informer.position), "one figure per partition read"


def test_a_watch_says_the_reader_failed_even_once_nothing_else_holds_its_informer(log, caplog):
    # Nothing refers back to an informer (so a dropped one is freed at once): the failure must reach
    # its watches by the fan-out itself, or a watch that outlives it would end as if stopped.
    write(log, domain(1, 10))

    def watch_alone() -> tuple[Watch, weakref.ref[Informer]]:
        informer = Informer(KafkaSettings(domains_topic=DOMAINS, hosts_topic=HOSTS), codec=CODEC,
                            consumer_factory=log.factory)
        informer.start()
        assert informer.wait_for_sync(5)
        return informer.changes(timeout=10), weakref.ref(informer)

    # Its error line would hold the failure, and through its traceback the informer, in pytest's capture.
    caplog.set_level(logging.CRITICAL, logger="bridge.consumer.informer")
    watch, informer = watch_alone()
    log.inject_error(KafkaError._FATAL, fatal=True)
    wait_until(lambda: (live := informer()) is None or live.failure is not None, timeout=5,
               what="the reader to fail", interval=0.01)
    gc.collect()  # what held the informer only through a cycle (its failure's traceback) is gone now
    with pytest.raises(ConsumerError, match="stopped reading"):
        for _ in watch:
            pass
