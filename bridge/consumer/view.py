"""The view: the store, the position it reflects, the recent changes, and applying the reader's poll batches.

One :class:`View` per informer. The reflector thread applies each poll batch atomically (:meth:`View.apply`):
a snapshot (:meth:`View.snapshot`) never sees half a poll batch, and always matches the position it
reports. The delivery fan-out subscribes through :meth:`View.subscribe`, which runs while no poll batch
is being applied, so what a new reader is given (the synced view as adds, or the changes after a
position) and what it gets next never overlap or leave a gap.

``_cond`` (a Condition) guards ``_store``, ``_position``, ``_history``, ``_synced`` and ``counters``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.consumer.changes import Change, ChangeCause, ChangeType
from bridge.consumer.history import ChangeHistory
from bridge.consumer.position import Offset, Position
from bridge.consumer.reflector import PollBatch
from bridge.consumer.snapshot import Snapshot
from bridge.consumer.store import APPLIED, LISTED_AWAY, NO_OP, OLDER, ApplyResult, Store
from bridge.records import DomainRecord, HostRecord
from bridge.serde import DomainTombstone, Heartbeat, HostTombstone, Payload

T = TypeVar("T")

Clock = Callable[[], int]
"""Microseconds since the epoch."""


@dataclass
class ViewCounters:
    """Messages the view took in or left out, since it was made."""

    applied: int = 0
    """Messages taken into the view (newer than anything seen for their key)."""
    skipped_older: int = 0
    """Domain records not newer than a version already seen: duplicates or out of order."""
    listed_away: int = 0
    """Domain records their host's latest inventory had already listed away."""


class View:
    """The consistent view of the fleet that an informer serves."""

    def __init__(self, store: Store, position: Position, history: int, clock: Clock) -> None:
        self._cond = threading.Condition()
        self._store = store
        self._position = position
        self._history = ChangeHistory(history)
        self._clock = clock
        self._synced = False
        self.counters = ViewCounters()

    # -- the reflector's side ----------------------------------------------------------------------

    def apply(self, batch: PollBatch, deliver: Callable[[list[Change], bool], None]) -> None:
        """Apply one poll batch atomically, then ``deliver(changes, just_synced)`` still inside it.

        ``just_synced`` is True when this poll batch made the view synced: readers that waited for the
        sync start from :meth:`initial_adds` then.
        """
        changes: list[Change] = []
        hosts_changed = False
        take_domain = self._store.take_domain
        applied = older = listed_away = 0  # counted here, added once: this loop runs per record
        with self._cond:
            for payload, source in zip(batch.payloads, batch.sources, strict=True):
                if isinstance(payload, DomainRecord):  # nearly every message: no result object made
                    outcome = take_domain(payload, source, changes)
                else:
                    result = self._apply_other(payload, source)
                    hosts_changed |= isinstance(payload, HostRecord | HostTombstone)
                    outcome = result.outcome
                    changes.extend(result.changes)
                if outcome is APPLIED:
                    applied += 1
                elif outcome is OLDER:
                    older += 1
                elif outcome is LISTED_AWAY:
                    listed_away += 1
            counters = self.counters
            counters.applied += applied
            counters.skipped_older += older
            counters.listed_away += listed_away
            self._position = batch.position
            self._history.extend(changes, batch.position)
            just_synced = batch.synced and not self._synced
            if just_synced:
                self._synced = True
                self._cond.notify_all()
            deliver(changes, just_synced)
            if hosts_changed and self._synced:
                # Only after sync: before it, hosts whose records are still unread would be missing
                # from the horizon.
                self._store.prune_graveyard(self._clock())

    def _apply_other(self, payload: Payload, source: Offset) -> ApplyResult:
        """A message other than a DomainRecord (inside :meth:`apply`)."""
        if isinstance(payload, DomainTombstone):
            return self._store.apply_tombstone(payload.uuid, source)
        if isinstance(payload, HostRecord):
            return self._store.apply_host(payload, source)
        if isinstance(payload, Heartbeat):
            # No prune after it: a heartbeat moves no listing, and a host it revives only lowers the
            # horizon.
            # A heartbeat topic's tombstone forgets nothing.
            return NO_OP if payload.record is None else self._store.apply_heartbeat(payload.record)
        assert isinstance(payload, HostTombstone)
        return self._store.apply_host_tombstone(payload.host, source)

    # -- readers -----------------------------------------------------------------------------------

    def subscribe(self, join: Callable[[bool], T]) -> T:
        """Run ``join(synced)`` between poll batches, so a new reader's start lines up with the next one."""
        with self._cond:
            return join(self._synced)

    def initial_adds(self) -> list[Change]:
        """The view as ADDED changes, sorted by host, name and UUID (call inside :meth:`subscribe`)."""
        return [Change(ChangeType.ADDED, r.uuid, None, r, ChangeCause.INITIAL)
                for r in sorted(self._store.domains().values(), key=lambda r: (r.host, r.name, r.uuid))]

    def changes_since(self, position: Position) -> list[Change]:
        """The retained changes after ``position`` (inside :meth:`subscribe`); PositionExpired if gone."""
        return self._history.since(position)

    def snapshot(self) -> Snapshot:
        """A consistent copy of the view and the position it reflects."""
        now = self._clock()
        with self._cond:
            return Snapshot(
                domains=self._store.domains(),
                hosts=self._store.hosts(),
                position=self._position,
                taken_at=now,
                synced=self._synced,
                stale_hosts=self._store.stale_hosts(now),
                unreachable_hosts=self._store.unreachable_hosts(),
                deleted=self._store.graveyard(),
            )

    def get(self, uuid: str) -> DomainRecord | None:
        with self._cond:
            return self._store.get(uuid)

    def stale_hosts(self) -> frozenset[str]:
        now = self._clock()
        with self._cond:
            return self._store.stale_hosts(now)

    def unreachable_hosts(self) -> frozenset[str]:
        with self._cond:
            return self._store.unreachable_hosts()

    @property
    def position(self) -> Position:
        with self._cond:
            return self._position

    @property
    def synced(self) -> bool:
        with self._cond:
            return self._synced

    def counts(self) -> ViewCounters:
        with self._cond:
            return ViewCounters(self.counters.applied, self.counters.skipped_older, self.counters.listed_away)

    def wait_for_sync(self, give_up: Callable[[], bool], timeout: float | None) -> bool:
        """Block until synced (True), ``give_up()`` or ``timeout``; callers of :meth:`wake` end the wait."""
        with self._cond:
            self._cond.wait_for(lambda: self._synced or give_up(), timeout)
            return self._synced

    def wake(self) -> None:
        """Wake :meth:`wait`ers, e.g. when the reader failed or the informer stopped."""
        with self._cond:
            self._cond.notify_all()
