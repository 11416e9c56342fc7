"""The last word on a key is its owner's: re-assertion requests across hosts (:class:`Reasserter`).

Kafka orders the messages of one producer only. When a domain changes hosts, the old owner's last
record and the new owner's claim come from two producers; a broker failover, or an old owner that
handles its hand-off event late, can append the old owner's record (a lower version) after the claim.
Live consumers keep the higher version, but compaction keeps the last offset: a fresh view would put
the domain back on the old host until the owner's next resync.

So a host that stops owning a domain it held (see :meth:`bridge.core.ownership.Ownership.take_yielded`)
waits until none of its records of the domain is in flight, then writes a
:class:`~bridge.signals.ReassertSignal` to the control topic. Every agent reads it; the one that
holds the domain publishes it again, versioned as a claim, and that record is produced after the old
owner's last record was acknowledged, so it lands after it. Runs on the pipeline thread, but for
:meth:`Reasserter.requested`, which the ``control-signals`` thread calls.
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


class Reasserter:
    """Sends re-assertion requests for yielded domains and answers the ones for domains held here."""

    def __init__(self, host: str, control_topic: str | None, queue: WorkQueue, ownership: Ownership,
                 publisher: RecordSink, now: Clock, outrank: Callable[[str], None]) -> None:
        """``outrank(uuid)``: version the domain's next record as a claim (ahead by the clock bound)."""
        self._host = host
        self._topic = control_topic
        self._queue = queue
        self._ownership = ownership
        self._publisher = publisher
        self._now = now
        self._outrank = outrank
        self._waiting: dict[str, None] = {}  # yielded, a record of it still in flight (ordered set)
        self._lock = threading.Lock()  # guards _requests, filled by the control-signals thread
        self._requests: list[ReassertSignal] = []
        self.sent = 0
        self.answered = 0

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
            requests, self._requests = self._requests, []
        for signal in requests:
            if signal.requested_by == self._host or not self._ownership.holds(signal.uuid):
                continue
            log.info("publishing %s again: %s stopped owning it (request %s)", signal.uuid,
                     signal.requested_by or "?", signal.id[:8])
            self.answered += 1
            self._outrank(signal.uuid)
            self._queue.request_resync([signal.uuid], signal.id)

    def _send(self, uuid: str) -> None:
        if self._topic is None:
            log.info("%s left this host; without a control topic its owner is not asked to publish it "
                     "again (its next resync does)", uuid)
            return
        signal = ReassertSignal.new(uuid, self._now(), self._host)
        log.info("%s left this host; asking its owner to publish it again (request %s)", uuid, signal.id[:8])
        self.sent += 1
        self._publisher.publish([Message(self._topic, signal.key(), signal.value())], lambda: None)
