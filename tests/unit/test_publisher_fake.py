"""The publisher over a fake producer: redelivery in order, and ``on_done`` once per sequence."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from bridge.agent.publisher import Message, Publisher
from tests.fakes import FakeProducer


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def publisher(producer: FakeProducer) -> Iterator[Publisher]:
    publisher = Publisher({}, max_retry_backoff=0.05, producer_factory=producer.factory)
    publisher.start()
    yield publisher
    publisher.stop()


class Done:
    def __init__(self) -> None:
        self.calls = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()


def messages(*keys: str) -> list[Message]:
    return [Message("libvirt.domains", key.encode(), f"value-{key}".encode()) for key in keys]


def test_the_producer_gets_the_bridges_settings(producer, publisher):
    assert producer.config is not None
    assert producer.config["enable.idempotence"] is True
    assert producer.config["acks"] == "all"


def test_a_failed_delivery_is_produced_again_in_order_and_on_done_runs_once_after_all_acks(producer, publisher):
    done = Done()
    publisher.publish(messages("record", "tombstone"), done)
    first = producer.wait_produced(2)
    assert [m.key for m in first] == [b"record", b"tombstone"]

    producer.fail(0)
    producer.ack(1)
    again = producer.wait_produced(4)  # the whole sequence, again, in order
    assert [m.key for m in again[2:]] == [b"record", b"tombstone"]
    assert publisher.redelivered == 1
    assert publisher.delivery_errors == 1
    assert done.calls == 0

    producer.ack(2)
    producer.wait_reported(3)  # fail 0, ack 1, ack 2: all served to the publisher
    assert done.calls == 0, "on_done waits for every message of the sequence"
    assert publisher.in_flight() == 1

    producer.ack(3)
    assert done.event.wait(2)
    producer.wait_reported(4)
    assert done.calls == 1
    assert publisher.in_flight() == 0
    assert len(producer.produced) == 4, "nothing produced after the acks"


def test_a_delivery_failing_again_is_retried_until_acked(producer, publisher):
    done = Done()
    publisher.publish(messages("only"), done)
    for attempt in range(3):
        producer.wait_produced(attempt + 1)
        producer.fail(attempt)
    producer.wait_produced(4)
    producer.ack(3)
    assert done.event.wait(2)
    producer.wait_reported(4)
    assert done.calls == 1
    assert [m.key for m in producer.produced] == [b"only"] * 4
    assert publisher.redelivered == 3


def test_sequences_complete_independently(producer, publisher):
    first, second = Done(), Done()
    publisher.publish(messages("a"), first)
    publisher.publish(messages("b"), second)
    producer.wait_produced(2)
    producer.ack(1)
    assert second.event.wait(2)
    assert first.calls == 0
    producer.ack(0)
    assert first.event.wait(2)
    assert (first.calls, second.calls) == (1, 1)
