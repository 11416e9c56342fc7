"""The thread-safe hand-over between libvirt callbacks, Kafka deliveries and the pipeline.

Wraps the pure :class:`~bridge.core.coalescer.Coalescer` in one lock and a condition the pipeline
waits on. Producers of work: the event callbacks (:meth:`WorkQueue.add_event`), resync requests, and
delivery reports (:meth:`WorkQueue.done`), which also queue resync acknowledgements for the pipeline,
and the snapshot readers (:meth:`WorkQueue.post_results`), whose finished reads wake the pipeline the
same way.

Only a change the pipeline can act on notifies the condition: a domain becoming ready, an ack it must
hand to the resync, a finished read, a wake-up. One wake-up then takes everything that is ready.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from bridge.core.coalescer import Batch, Coalescer
from bridge.core.version_clock import Clock
from bridge.records import DomainEvent


class WorkQueue:
    """Coalescer + lock + condition; safe to call from any thread."""

    def __init__(self, now: Clock, max_events_per_domain: int = 1000) -> None:
        self._now = now
        self._coalescer = Coalescer(max_events_per_domain)
        self._cond = threading.Condition()
        self._acks: deque[tuple[str, str]] = deque()
        self._results: deque[Any] = deque()
        self._wakeups = 0
        self.events_received = 0
        self._received_by_id: dict[str, int] = {}

    def add_event(self, uuid: str, name: str, event: DomainEvent) -> None:
        """The event sink for :class:`~bridge.agent.event_capture.EventCapture`."""
        with self._cond:
            ready = self._coalescer.ready_count
            self._coalescer.add(uuid, event, name)
            self.events_received += 1
            self._received_by_id[event.id] = self._received_by_id.get(event.id, 0) + 1
            if self._coalescer.ready_count != ready:  # queued behind an in-flight record: nothing to do yet
                self._cond.notify()

    def events_received_by_id(self) -> dict[str, int]:
        """Events received so far, by libvirt event id (``LIFECYCLE``, ``REBOOT``, ...)."""
        with self._cond:
            return dict(self._received_by_id)

    def request_resync(self, uuids: list[str], resync_id: str) -> None:
        with self._cond:
            now = self._now()
            for uuid in uuids:
                self._coalescer.request_resync(uuid, resync_id, now)
            self._cond.notify()

    def take(self, limit: int, timeout: float) -> list[Batch]:
        """Up to ``limit`` ready batches, waiting up to ``timeout`` s for work, a result or a :meth:`wake`.

        With ``limit`` 0 (the readers are all busy) ready domains do not end the wait; results do.
        """
        with self._cond:
            if not ((limit > 0 and self._coalescer.ready_count) or self._acks or self._wakeups or self._results):
                self._cond.wait(timeout)
            self._wakeups = 0
            return self._coalescer.take(limit) if limit > 0 else []

    def post_results(self, results: list[Any]) -> None:
        """A snapshot reader finished (any thread); wakes the pipeline, which takes them with :meth:`results`."""
        with self._cond:
            self._results.extend(results)
            self._cond.notify()

    def results(self) -> list[Any]:
        """Results posted since the last call, in the order they were posted."""
        with self._cond:
            out = list(self._results)
            self._results.clear()
            return out

    def wait_results(self, timeout: float) -> list[Any]:
        """Like :meth:`results`, waiting up to ``timeout`` s for at least one (a drain's wait)."""
        with self._cond:
            if not self._results:
                self._cond.wait(timeout)
            out = list(self._results)
            self._results.clear()
            return out

    def take_more(self, uuid: str) -> Batch | None:
        with self._cond:
            return self._coalescer.take_more(uuid)

    def requeue(self, batch: Batch) -> None:
        with self._cond:
            self._coalescer.requeue(batch)

    def done(self, uuid: str, resync_id: str | None = None) -> None:
        """The record for ``uuid`` is acknowledged (or was not needed); wakes the pipeline."""
        with self._cond:
            ready = self._coalescer.ready_count
            self._coalescer.done(uuid)
            if resync_id is not None:
                self._acks.append((uuid, resync_id))
            c = self._coalescer
            if resync_id is not None or c.ready_count != ready or not (c.pending_count or c.in_flight_count):
                self._cond.notify()  # something to take, an ack for the resync, or idle (a drain's end)

    def drain_acks(self) -> list[tuple[str, str]]:
        """Acknowledged ``(uuid, resync_id)`` pairs since the last call."""
        with self._cond:
            out = list(self._acks)
            self._acks.clear()
            return out

    def wake(self) -> None:
        """Make a waiting :meth:`take` return now (timers, resync requests, shutdown)."""
        with self._cond:
            self._wakeups += 1
            self._cond.notify()

    def stats(self) -> tuple[int, int, int | None, int]:
        """(domains pending, domains in flight, oldest waiting µs timestamp, events elided)."""
        with self._cond:
            c = self._coalescer
            return c.pending_count, c.in_flight_count, c.oldest_waiting(), c.elided_total

    def in_flight(self, uuid: str) -> bool:
        """A batch of ``uuid`` was taken and its record is not acknowledged yet."""
        with self._cond:
            return self._coalescer.is_in_flight(uuid)

    def idle(self) -> bool:
        """Nothing pending, nothing in flight."""
        with self._cond:
            return not self._coalescer.pending_count and not self._coalescer.in_flight_count
