"""The last word on a key is its owner's: re-assertion requests across hosts (:class:`Reasserter`).

Kafka orders the messages of one producer only. When a domain changes hosts, the old owner's last
record and the new owner's claim come from two producers; a broker failover, or an old owner that
handles its hand-off event late, can append the old owner's record (a lower version) after the claim.
Live consumers keep the higher version, but compaction keeps the last offset: a fresh view would put
the domain back on the old host until the owner's next resync.

So a host that stops owning a domain it held (see :meth:`bridge.core.ownership.Ownership.take_yielded`)
waits until none of its records of the domain is in flight, then writes a
:class:`~bridge.signals.ReassertSignal` to the control topic, with the partition and offset where
its last record of the domain landed. Every agent reads it; the one that holds the domain waits for
its own record of it in flight, if any, and then, unless its own newest record of it already sits
after the requester's in that partition (the usual case: the claim came last), publishes it again,
versioned as a claim. That record is produced after the old owner's last record was acknowledged, so
it lands after it. Runs on the pipeline thread, but for :meth:`Reasserter.requested` (the
``control-signals`` thread) and :meth:`KeyPositions.note` (the delivery thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from bridge.agent.pipeline_config import RecordSink
from bridge.agent.publisher import Message
from bridge.agent.work_queue import WorkQueue
from bridge.core.ownership import Ownership
from bridge.core.version_clock import Clock
from bridge.signals import ReassertSignal

log = logging.getLogger(__name__)


class KeyPositions:
    """Where each domain's latest acknowledged record landed: (partition, offset). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _at: written on the delivery thread, read on the pipeline's
        self._at: dict[str, tuple[int, int]] = {}

    def note(self, uuid: str, partition: int, offset: int) -> None:
        with self._lock:
            self._at[uuid] = (partition, offset)

    def get(self, uuid: str) -> tuple[int, int] | None:
        with self._lock:
            return self._at.get(uuid)

    def forget(self, uuid: str) -> None:
        with self._lock:
            self._at.pop(uuid, None)


class Reasserter:
    """Sends re-assertion requests for yielded domains and answers the ones for domains held here."""

    def __init__(self, host: str, control_topic: str | None, queue: WorkQueue, ownership: Ownership,
                 publisher: RecordSink, now: Clock, outrank: Callable[[str], None], positions: KeyPositions) -> None:
        """``outrank(uuid)``: version the domain's next record as a claim (ahead by the clock bound);
        ``positions``: where this host's records landed (filled by the record writer)."""
        self._host = host
        self._positions = positions
        self._topic = control_topic
        self._queue = queue
        self._ownership = ownership
        self._publisher = publisher
        self._now = now
        self._outrank = outrank
        self._waiting: dict[str, None] = {}  # yielded, a record of it still in flight (ordered set)
        self._lock = threading.Lock()  # guards _requests, filled by the control-signals thread
        self._requests: list[ReassertSignal] = []
        self._deferred: list[ReassertSignal] = []  # for a held domain whose own record is in flight
        self.sent = 0
        self.answered = 0
        self.already_last = 0
        """Requests not answered because this host's newest record already sat after the requester's."""
        self.judged = 0
        """Requests decided so far: ignored (not held here, or our own), already last, or answered."""

    @property
    def deferred(self) -> int:
        """Requests for a held domain waiting for this host's own record of it to land."""
        return len(self._deferred)

    def requested(self, signal: ReassertSignal) -> None:
        """A request read from the control topic (any thread); handled on the next :meth:`step`."""
        with self._lock:
            self._requests.append(signal)
        self._queue.wake()

    def step(self) -> None:
        """Send the requests now due, and queue a record for each request about a domain held here."""
        for uuid in self._ownership.take_yielded():
            self._waiting[uuid] = None
        for uuid in [u for u in self._waiting if not self._queue.in_flight(u)]:
            del self._waiting[uuid]
            self._send(uuid)
        with self._lock:
            requests, self._requests = self._deferred + self._requests, []
        self._deferred = []
        for signal in requests:
            if signal.requested_by != self._host and self._ownership.holds(signal.uuid):
                if self._queue.in_flight(signal.uuid):
                    self._deferred.append(signal)  # judged once this host's own record has landed
                    continue
                self._answer(signal)
            self.judged += 1

    def _answer(self, signal: ReassertSignal) -> None:
        mine = self._positions.get(signal.uuid)
        if signal.after is not None and mine is not None and mine[0] == signal.after[0] and mine[1] > signal.after[1]:
            self.already_last += 1
            return
        log.info("publishing %s again: %s stopped owning it (request %s)", signal.uuid,
                 signal.requested_by or "?", signal.id[:8])
        self.answered += 1
        self._outrank(signal.uuid)
        self._queue.request_resync([signal.uuid], signal.id)

    def _send(self, uuid: str) -> None:
        after = self._positions.get(uuid)
        self._positions.forget(uuid)  # no longer ours: memory stays bounded by the domains held here
        if self._topic is None:
            log.info("%s left this host; without a control topic its owner is not asked to publish it "
                     "again (its next resync does)", uuid)
            return
        signal = ReassertSignal.new(uuid, self._now(), self._host, after)
        log.info("%s left this host; asking its owner to publish it again (request %s)", uuid, signal.id[:8])
        self.sent += 1
        self._publisher.publish([Message(self._topic, signal.key(), signal.value())], lambda: None)
