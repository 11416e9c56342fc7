"""Per-domain coalescing: at most one record in flight per domain, bounded memory.

Events for a domain queue here until the pipeline takes them as one :class:`Batch`. While that batch's
record is in flight (produced, not yet acknowledged), new events for the domain queue again and form
the next batch, so under back-pressure one record carries many events, and memory is bounded by the
number of domains times ``max_events_per_domain``, never by the length of an outage. Events beyond the
cap are elided (counted in the next record's ``events_elided``), dropping the oldest non-lifecycle
event first because lifecycle events carry the state transitions readers care about most.

Pure and single-threaded: the agent's :class:`bridge.agent.work_queue.WorkQueue` adds the locking.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from bridge.records import DomainEvent


@dataclass(frozen=True)
class Batch:
    """Work for one record: the events it reports, oldest first, and why it is due."""

    uuid: str
    events: tuple[DomainEvent, ...]
    name: str = ""
    """The domain's latest name seen with its events (for DELETED records)."""
    elided: int = 0
    resync_id: str | None = None
    """Set when a resync asked for this domain's record (it then also serves the resync)."""
    queued_at: int = 0
    """Microseconds timestamp of the oldest work in this batch."""


@dataclass
class _Pending:
    events: list[DomainEvent] = field(default_factory=list)
    name: str = ""
    elided: int = 0
    resync_id: str | None = None
    queued_at: int = 0

    def empty(self) -> bool:
        return not self.events and self.resync_id is None and self.elided == 0


class Coalescer:
    """Queues events per domain and hands out at most one batch per domain at a time."""

    def __init__(self, max_events_per_domain: int = 1000) -> None:
        if max_events_per_domain < 1:
            raise ValueError("max_events_per_domain must be at least 1")
        self._cap = max_events_per_domain
        self._pending: dict[str, _Pending] = {}
        self._in_flight: dict[str, int] = {}
        # Domains with pending work and nothing in flight, oldest first: FIFO keeps it fair.
        self._ready: OrderedDict[str, None] = OrderedDict()
        self.elided_total = 0

    def add(self, uuid: str, event: DomainEvent, name: str = "") -> None:
        """Queue an event for ``uuid`` (``name``: the domain's name as the event reported it)."""
        p = self._pending_for(uuid, event.received_at)
        p.name = name or p.name
        if len(p.events) >= self._cap:
            self._elide_one(p)
        p.events.append(event)
        self._mark_ready(uuid)

    def request_resync(self, uuid: str, resync_id: str, now: int) -> None:
        """Ask for a fresh record of ``uuid`` on behalf of resync ``resync_id``."""
        p = self._pending_for(uuid, now)
        p.resync_id = resync_id
        self._mark_ready(uuid)

    def take(self, limit: int) -> list[Batch]:
        """Up to ``limit`` batches of domains with pending work and no record in flight."""
        out: list[Batch] = []
        while self._ready and len(out) < limit:
            uuid, _ = self._ready.popitem(last=False)
            p = self._pending.pop(uuid)
            self._in_flight[uuid] = p.queued_at
            out.append(Batch(uuid, tuple(p.events), p.name, p.elided, p.resync_id, p.queued_at))
        return out

    def take_more(self, uuid: str) -> Batch | None:
        """Events that arrived for an in-flight ``uuid`` since its batch was taken (the batch grows)."""
        if uuid not in self._in_flight or uuid not in self._pending:
            return None
        p = self._pending.pop(uuid)
        self._ready.pop(uuid, None)
        return Batch(uuid, tuple(p.events), p.name, p.elided, p.resync_id, p.queued_at)

    def requeue(self, batch: Batch) -> None:
        """Give a taken batch back (its record could not be made); its events go first again."""
        self._in_flight.pop(batch.uuid, None)
        p = self._pending.pop(batch.uuid, None)
        merged = _Pending(list(batch.events), batch.name, batch.elided, batch.resync_id, batch.queued_at)
        if p is not None:
            merged.events.extend(p.events)
            merged.name = p.name or merged.name
            merged.elided += p.elided
            merged.resync_id = p.resync_id or merged.resync_id
        self._pending[batch.uuid] = merged
        self._ready[batch.uuid] = None
        self._ready.move_to_end(batch.uuid, last=False)

    def has_pending(self, uuid: str) -> bool:
        """Whether new work for ``uuid`` is waiting."""
        return uuid in self._pending

    def is_in_flight(self, uuid: str) -> bool:
        return uuid in self._in_flight

    def done(self, uuid: str) -> None:
        """The in-flight record of ``uuid`` was acknowledged (or dropped): its next batch may go."""
        self._in_flight.pop(uuid, None)
        if uuid in self._pending:
            self._ready[uuid] = None

    @property
    def ready_count(self) -> int:
        """Domains whose next batch can be taken now."""
        return len(self._ready)

    @property
    def pending_count(self) -> int:
        """Domains with queued work (ready or waiting behind an in-flight record)."""
        return len(self._pending)

    @property
    def in_flight_count(self) -> int:
        """Domains with a record in flight."""
        return len(self._in_flight)

    def oldest_waiting(self) -> int | None:
        """Timestamp (µs) of the oldest work queued or in flight, or None when idle."""
        stamps = [p.queued_at for p in self._pending.values()]
        stamps.extend(self._in_flight.values())
        return min(stamps) if stamps else None

    def _pending_for(self, uuid: str, now: int) -> _Pending:
        p = self._pending.get(uuid)
        if p is None:
            p = self._pending[uuid] = _Pending(queued_at=now)
        return p

    def _mark_ready(self, uuid: str) -> None:
        if uuid not in self._in_flight and uuid not in self._ready:
            self._ready[uuid] = None

    def _elide_one(self, p: _Pending) -> None:
        victim = next((i for i, e in enumerate(p.events) if e.id != "LIFECYCLE"), 0)
        del p.events[victim]
        p.elided += 1
        self.elided_total += 1
