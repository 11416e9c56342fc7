"""A Kafka producer for :class:`bridge.agent.publisher.Publisher` that the test acknowledges by hand.

Every ``produce`` is recorded (:attr:`FakeProducer.produced`, in order, redeliveries included). The
test decides each message's fate with :meth:`FakeProducer.ack` or :meth:`FakeProducer.fail`; as with
librdkafka the delivery report then runs inside the next ``poll``/``flush``, on the thread that polls
(the publisher's ``kafka-delivery`` thread). ``auto_ack=True`` acknowledges every message as produced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

DeliveryReport = Callable[[KafkaError | None, object], None]


@dataclass
class Produced:
    """One produced message and what became of it."""

    index: int
    topic: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    on_delivery: DeliveryReport
    outcome: str | None = None
    """None until the test decides: ``"acked"`` or ``"failed"``."""

    # -- confluent_kafka.Message, as a delivery report hands it over: one partition, offsets in order --

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.index


class FakeProducer:
    """Records what was produced; delivers or fails each message when the test says so."""

    def __init__(self, *, auto_ack: bool = False) -> None:
        self.auto_ack = auto_ack
        self.config: dict[str, Any] | None = None
        self.produced: list[Produced] = []
        self.reported = 0
        """Delivery reports whose callback has returned (served by a poll)."""
        self._cond = threading.Condition()
        self._reports: list[tuple[Produced, KafkaError | None]] = []

    def factory(self, config: dict[str, Any]) -> FakeProducer:
        """The ``producer_factory`` to hand the publisher: keeps its config, returns this producer."""
        self.config = config
        return self

    # -- confluent_kafka.Producer ------------------------------------------------------------------

    def produce(self, topic: str, *, key: bytes, value: bytes | None, headers: list[tuple[str, str | bytes | None]],
                on_delivery: DeliveryReport) -> None:
        with self._cond:
            message = Produced(len(self.produced), topic, key, value, list(headers), on_delivery)
            self.produced.append(message)
            if self.auto_ack:
                message.outcome = "acked"
                self._reports.append((message, None))
            self._cond.notify_all()

    def poll(self, timeout: float) -> int:
        with self._cond:
            if not self._reports:
                self._cond.wait(min(timeout, 0.05))
            reports, self._reports = self._reports, []
        for message, error in reports:  # outside the lock, like librdkafka's callbacks
            message.on_delivery(error, message)
            with self._cond:
                self.reported += 1
                self._cond.notify_all()
        return len(reports)

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        self.poll(0)
        while len(self) and time.monotonic() < deadline:
            self.poll(max(0.0, deadline - time.monotonic()))
        return len(self)

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for m in self.produced if m.outcome is None) + len(self._reports)

    # -- the test's side -----------------------------------------------------------------------------

    def ack(self, index: int) -> None:
        """Acknowledge message ``index``; its report runs at the next poll."""
        self._decide(index, None)

    def fail(self, index: int, code: int = KafkaError._MSG_TIMED_OUT) -> None:
        """Fail message ``index`` with ``code``; its report runs at the next poll."""
        self._decide(index, KafkaError(code))

    def ack_all(self) -> int:
        """Acknowledge every message still undecided; returns how many."""
        with self._cond:
            pending = [m.index for m in self.produced if m.outcome is None]
        for index in pending:
            self.ack(index)
        return len(pending)

    def wait_produced(self, count: int, timeout: float = 5.0) -> list[Produced]:
        """Wait until at least ``count`` messages were produced; returns them all (AssertionError if not)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.produced) >= count, timeout):
                raise AssertionError(f"{len(self.produced)} messages produced, expected {count}: {self.produced}")
            return list(self.produced)

    def wait_reported(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` delivery reports were served to the producer's user, callbacks returned."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.reported >= count, timeout):
                raise AssertionError(f"{self.reported} delivery reports served, expected {count}")

    def undecided(self) -> list[Produced]:
        with self._cond:
            return [m for m in self.produced if m.outcome is None]

    def _decide(self, index: int, error: KafkaError | None) -> None:
        with self._cond:
            message = self.produced[index]
            assert message.outcome is None, f"message {index} was already {message.outcome}"
            message.outcome = "acked" if error is None else "failed"
            self._reports.append((message, error))
            self._cond.notify_all()
