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
after the requester's in that partition with a higher version (the usual case: the claim came last),
publishes it again. That record is produced after the old owner's last record was acknowledged, so
it lands after it.

The request also carries that record's version, and every agent that reads it keeps its clock above
it (:meth:`VersionClock.restore`, a hybrid logical clock's receive rule). A claim is versioned only
``--max-clock-skew`` ahead of its host's clock, and that margin covers the previous owner's plain
records, not one it published ahead of its own clock (its answer to an earlier request). Seen on the
fleet: a destination whose restarted agent had listed the incoming domain asked the source to publish
again; the source's answer, ahead by the margin on a clock 45 ms ahead of the destination's,
outranked the destination's claim 35 ms later, and the source's own request after its hand-off
reached the destination before the claim, when it held nothing to publish. Observing the version
makes the claim, or the answer to the request, sort above it whichever comes first; and an answer to
a request that names a version takes no margin, since the version to go above is known.

Runs on the pipeline thread, but for :meth:`Reasserter.requested` (the ``control-signals`` thread)
and :meth:`KeyPositions.note` (the delivery thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import NamedTuple

from bridge.agent.pipeline_config import RecordSink
from bridge.agent.publisher import Message
from bridge.agent.work_queue import WorkQueue
from bridge.core.ownership import Ownership
from bridge.core.version_clock import Clock, VersionClock
from bridge.signals import ReassertSignal

log = logging.getLogger(__name__)

def plausible_ahead_us(max_clock_skew: float) -> int:
    """How far ahead of this host's clock a requester's version may be and still be observed (µs).

    Within the clock bound, a record's version is at most a claim's margin ahead of its host's clock,
    which is at most the bound ahead of this one: twice ``--max-clock-skew``. A second more covers a
    requester whose own clock was lifted by an earlier request (each lift is bounded the same way).
    Beyond that the request is not observed (and logged), and an answer to it takes a claim's
    margin: every version this host issues stays above an observed one until its own clock catches
    up, and one corrupt request must not carry them far into the future.
    """
    return int((2 * max_clock_skew + 1.0) * 1e6)


class Landed(NamedTuple):
    """Where one record landed, and its version."""

    partition: int
    offset: int
    version: int


class KeyPositions:
    """Where each domain's latest acknowledged record landed. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _at: written on the delivery thread, read on the pipeline's
        self._at: dict[str, Landed] = {}

    def note(self, uuid: str, partition: int, offset: int, version: int) -> None:
        with self._lock:
            self._at[uuid] = Landed(partition, offset, version)

    def get(self, uuid: str) -> Landed | None:
        with self._lock:
            return self._at.get(uuid)

    def forget(self, uuid: str) -> None:
        with self._lock:
            self._at.pop(uuid, None)


class Reasserter:
    """Sends re-assertion requests for yielded domains and answers the ones for domains held here."""

    def __init__(self, host: str, control_topic: str | None, queue: WorkQueue, ownership: Ownership,
                 publisher: RecordSink, now: Clock, clock: VersionClock, outrank: Callable[[str], None],
                 positions: KeyPositions, max_ahead: int) -> None:
        """``clock``: the pipeline's version clock, kept above every requester's version up to
        ``max_ahead`` µs ahead of ``now`` (:func:`plausible_ahead_us`);
        ``outrank(uuid)``: version the domain's next record as a claim (ahead by the clock bound), for
        a request without a version; ``positions``: where this host's records landed (filled by the
        record writer)."""
        self._host = host
        self._clock = clock
        self._max_ahead = max_ahead
        self._positions = positions
        self._topic = control_topic
        self._queue = queue
        self._ownership = ownership
        self._publisher = publisher
        self._now = now
        self._outrank = outrank
        self._waiting: dict[str, None] = {}  # yielded, a record of it still in flight (ordered set)
        self._lock = threading.Lock()  # guards _requests, _floor and implausible, set by the control-signals thread
        self._requests: list[ReassertSignal] = []
        self._floor = 0  # the highest plausible version of the requests read since the last observe()
        self._deferred: list[ReassertSignal] = []  # for a held domain whose own record is in flight
        self.sent = 0
        self.answered = 0
        self.already_last = 0
        """Requests not answered because this host's newest record already sat after the requester's."""
        self.judged = 0
        """Requests decided so far: ignored (not held here, or our own), already last, or answered."""
        self.implausible = 0
        """Requests whose version was too far ahead of this host's clock to observe."""

    @property
    def deferred(self) -> int:
        """Requests for a held domain waiting for this host's own record of it to land."""
        return len(self._deferred)

    def requested(self, signal: ReassertSignal) -> None:
        """A request read from the control topic (any thread); its version lifts the clock at the next
        :meth:`observe`, and it is judged at the next :meth:`step`."""
        version = signal.version if signal.requested_by != self._host else None
        ahead = 0 if version is None else version - self._now()
        with self._lock:
            self._requests.append(signal)
            if version is not None and ahead <= self._max_ahead:
                self._floor = max(self._floor, version)
            elif version is not None:
                self.implausible += 1
        if ahead > self._max_ahead:
            log.warning("request %s from %s for %s carries version %d, %.1f s ahead of this host's clock; "
                        "not observed (are the hosts' clocks in sync?)", signal.id[:8], signal.requested_by or "?",
                        signal.uuid, version, ahead / 1e6)
        self._queue.wake()

    def observe(self) -> None:
        """Lift the version clock above every plausible request read since the last call (pipeline thread).

        The pipeline calls it before it versions records, so a claim versioned in the same pass as a
        request arrived already sorts above it; :meth:`step` calls it too.
        """
        with self._lock:
            floor, self._floor = self._floor, 0
        if floor:
            self._clock.restore(floor)

    def step(self) -> None:
        """Send the requests now due, and queue a record for each request about a domain held here."""
        self.observe()
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
        if (signal.after is not None and mine is not None and mine.partition == signal.after[0]
                and mine.offset > signal.after[1] and (signal.version is None or mine.version > signal.version)):
            self.already_last += 1
            return
        log.info("publishing %s again: %s stopped owning it (request %s)", signal.uuid,
                 signal.requested_by or "?", signal.id[:8])
        self.answered += 1
        if signal.version is None or signal.version > self._clock.last:
            # No version to go above (an older requester's), or one too far ahead to observe: a claim's margin.
            self._outrank(signal.uuid)
        self._queue.request_resync([signal.uuid], signal.id)

    def _send(self, uuid: str) -> None:
        landed = self._positions.get(uuid)
        self._positions.forget(uuid)  # no longer ours: memory stays bounded by the domains held here
        if self._topic is None:
            log.info("%s left this host; without a control topic its owner is not asked to publish it "
                     "again (its next resync does)", uuid)
            return
        after, version = (None, None) if landed is None else ((landed.partition, landed.offset), landed.version)
        signal = ReassertSignal.new(uuid, self._now(), self._host, after, version)
        log.info("%s left this host; asking its owner to publish it again (request %s)", uuid, signal.id[:8])
        self.sent += 1
        self._publisher.publish([Message(self._topic, signal.key(), signal.value())], lambda: None)
