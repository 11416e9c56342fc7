"""The view's reconciliation core: pure state transitions, no I/O, no threads, no clock.

:class:`Store` turns the records of both topics into the fleet's current domains, following the
contract in DESIGN.md ("The consumer's contract", "Resync rule"):

- a DomainRecord is applied only if its version is newer than every version seen for its UUID;
- ``DELETED`` and tombstones remove the domain;
- a HostRecord's inventory removes every domain attributed to that host whose version is below
  ``listed_at`` and that the inventory does not list (a delete missed during an outage or crash);
- a heartbeat (heartbeats topic) updates a host's liveness only: status, agent and time come from
  whichever of the host's HostRecord and heartbeat is newer, the inventory from the HostRecord alone.

The final view does not depend on how the two topics, or different keys, interleave; only each
key's own order matters. That is why the inventory rule also runs when a record arrives *after* the
HostRecord that already listed it away: a record from host H, older than H's latest ``listed_at`` and
absent from H's inventory, describes a domain H no longer had, so it is removed on arrival.

The graveyard
-------------
When a domain leaves the view, the store remembers the highest version it saw for it. An older record
arriving later (a duplicate, a replay, a previous owner's record delivered after the new owner's
delete) is then skipped instead of resurrecting the domain. A tombstone carries no version, so it
must NOT clear that memory: the DELETED record before it is exactly what proves a late older record
stale. Dropping the entry at the tombstone would let such a record bring the domain back.

Kept forever, the graveyard would grow with every domain ever deleted. :meth:`Store.prune_graveyard`
bounds it: an entry (uuid, g) is redundant once every live host has completed a resync with
``listed_at > g``, because any record older than g from such a host is listed away on arrival by the
inventory rule (or, if that host re-created the domain, superseded by the newer RESYNC record its
inventory promises). Hosts whose heartbeat is stale are left out of that minimum, so a dead host
cannot pin the graveyard; the cost is that a host returning from the dead with a delayed record
older than a pruned delete shows it until that host's next resync lists it away. Without pruning the
graveyard is bounded by the deletes the log still holds plus those seen since the reader started.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

from bridge.consumer.changes import Change, ChangeCause, ChangeType
from bridge.consumer.position import Offset
from bridge.records import DomainRecord, HostRecord, HostStatus, RecordKind

DEFAULT_STALE_AFTER_INTERVALS = 3.0


class Outcome(enum.StrEnum):
    """What applying one message did."""

    APPLIED = "applied"
    """Newer than anything seen for its key: taken into the view (the view may not have changed)."""
    OLDER = "older"
    """Not newer than a version already seen for the UUID (duplicate or out of order), or a heartbeat
    not newer than the host's latest: skipped."""
    LISTED_AWAY = "listed-away"
    """Newer, but its host's latest inventory says the host no longer had the domain: not shown."""
    NO_OP = "no-op"
    """A tombstone for a key the view does not hold."""


class ApplyResult(NamedTuple):
    """The outcome of one apply, and the changes to the view it made (in order); a named tuple, as one
    is made for every record applied."""

    outcome: Outcome
    changes: tuple[Change, ...] = ()


# The members the reader's per-record path uses, bound once: on Python 3.11 each ``Enum.MEMBER``
# lookup costs about 120 ns (EnumType's attribute machinery), five of them per record applied.
APPLIED, OLDER, LISTED_AWAY = Outcome.APPLIED, Outcome.OLDER, Outcome.LISTED_AWAY
_KIND_DELETED = RecordKind.DELETED
_ADDED, _UPDATED, _BY_RECORD = ChangeType.ADDED, ChangeType.UPDATED, ChangeCause.RECORD

_OLDER = ApplyResult(Outcome.OLDER)
NO_OP = ApplyResult(Outcome.NO_OP)
"""The result of a message that changes nothing (shared: it carries no changes)."""
_APPLIED = ApplyResult(Outcome.APPLIED)
# A named tuple's own __new__ is a Python function, twice the cost of tuple's: a Change is made per record.
_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class _Listing:
    """A host's latest completed resync: at ``listed_at`` it owned exactly ``uuids``."""

    listed_at: int
    uuids: frozenset[str]

    def lists_away(self, record: DomainRecord) -> bool:
        return record.version < self.listed_at and record.uuid not in self.uuids


class Store:
    """The materialized view of both topics. Not thread-safe: one owner serializes calls."""

    def __init__(self, stale_after_intervals: float = DEFAULT_STALE_AFTER_INTERVALS) -> None:
        if stale_after_intervals <= 0:
            raise ValueError("stale_after_intervals must be > 0")
        self._stale_after = stale_after_intervals
        self._domains: dict[str, DomainRecord] = {}
        # Index host -> uuids the view attributes to it, so an inventory costs O(that host's domains).
        self._by_host: dict[str, set[str]] = {}
        self._graveyard: dict[str, int] = {}
        self._hosts: dict[str, HostRecord] = {}
        self._listings: dict[str, _Listing] = {}

    @classmethod
    def restore(
        cls,
        domains: Mapping[str, DomainRecord],
        hosts: Mapping[str, HostRecord],
        graveyard: Mapping[str, int],
        stale_after_intervals: float = DEFAULT_STALE_AFTER_INTERVALS,
    ) -> Store:
        """A store holding a previously taken view (see :class:`~bridge.consumer.snapshot.Snapshot`)."""
        store = cls(stale_after_intervals)
        for host in hosts.values():
            store.apply_host(host)
        # The graveyard first: a put clears a domain's entry, which keeps held and deleted apart even
        # for a snapshot that lists a domain as both (later updates rely on that).
        store._graveyard.update(graveyard)
        for record in domains.values():
            store._put(record, store._domains.get(record.uuid))
        return store

    # -- applying messages -------------------------------------------------------------------------

    def apply_domain(self, record: DomainRecord, source: Offset | None = None) -> ApplyResult:
        """Apply a DomainRecord from the domains topic."""
        changes: list[Change] = []
        outcome = self.take_domain(record, source, changes)
        return ApplyResult(outcome, tuple(changes))

    def take_domain(self, record: DomainRecord, source: Offset | None, changes: list[Change]) -> Outcome:
        """:meth:`apply_domain`, appending its changes to ``changes``: the reader's way, which spares
        a result object per record."""
        uuid = record.uuid
        held = self._domains.get(uuid)
        seen = held.version if held is not None else self._graveyard.get(uuid)
        if seen is not None and record.version <= seen:
            return OLDER
        if record.kind is _KIND_DELETED:
            changes.extend(self._remove(uuid, record.version, ChangeCause.DELETED, source))
            return APPLIED
        listing = self._listings.get(record.host)
        if listing is not None and listing.lists_away(record):
            changes.extend(self._remove(uuid, record.version, ChangeCause.INVENTORY, source))
            return LISTED_AWAY
        self._put(record, held)
        if held is None:
            changes.append(_new_tuple(Change, (_ADDED, uuid, None, record, _BY_RECORD, source)))
        else:
            changes.append(_new_tuple(Change, (_UPDATED, uuid, held, record, _BY_RECORD, source)))
        return APPLIED

    def apply_tombstone(self, uuid: str, source: Offset | None = None) -> ApplyResult:
        """Apply a tombstone (null value) for a domain key."""
        held = self._domains.get(uuid)
        if held is None:
            return NO_OP
        return ApplyResult(Outcome.APPLIED, self._remove(uuid, held.version, ChangeCause.TOMBSTONE, source))

    def apply_host(self, record: HostRecord, source: Offset | None = None) -> ApplyResult:
        """Store a HostRecord and reconcile its inventory if it reports a newer resync."""
        known = self._hosts.get(record.host)
        if known is not None and known.heartbeat_at > record.heartbeat_at:
            # A heartbeat read first is newer news of the host's liveness; the inventory is this record's.
            record = _with_liveness(record, known)
        self._hosts[record.host] = record
        listed_at = record.listed_at
        current = self._listings.get(record.host)
        # Refreshes repeat the latest listing; an older one (agent state lost) cannot list away more
        # than the newer one already did, so only a newer listing triggers reconciliation.
        if listed_at is None or (current is not None and listed_at <= current.listed_at):
            return _APPLIED
        listing = _Listing(listed_at, frozenset(e.uuid for e in record.domains))
        self._listings[record.host] = listing
        changes: list[Change] = []
        for uuid in sorted(self._by_host.get(record.host, ())):
            held = self._domains[uuid]
            if listing.lists_away(held):
                changes.extend(self._remove(uuid, held.version, ChangeCause.INVENTORY, source))
        return ApplyResult(Outcome.APPLIED, tuple(changes))

    def apply_heartbeat(self, beat: HostRecord) -> ApplyResult:
        """Take a heartbeat's liveness (status, agent, time, interval) if newer than the host's; never
        its inventory, which only the hosts topic carries."""
        held = self._hosts.get(beat.host)
        if held is not None and beat.heartbeat_at <= held.heartbeat_at:
            return _OLDER
        base = held if held is not None else HostRecord(host=beat.host, agent=beat.agent, heartbeat_at=0)
        self._hosts[beat.host] = _with_liveness(base, beat)
        return _APPLIED

    def apply_host_tombstone(self, host: str, source: Offset | None = None) -> ApplyResult:
        """Forget a decommissioned host. Its domains stay: a tombstone says nothing about them."""
        del source  # no view change to attribute
        if self._hosts.pop(host, None) is None:
            return NO_OP
        self._listings.pop(host, None)
        return _APPLIED

    # -- reading -----------------------------------------------------------------------------------

    def get(self, uuid: str) -> DomainRecord | None:
        return self._domains.get(uuid)

    def domains(self) -> dict[str, DomainRecord]:
        """A copy of the view: uuid -> the newest record."""
        return dict(self._domains)

    def hosts(self) -> dict[str, HostRecord]:
        """A copy of the latest HostRecord of every host."""
        return dict(self._hosts)

    def graveyard(self) -> dict[str, int]:
        """A copy of uuid -> highest version seen, for domains no longer in the view."""
        return dict(self._graveyard)

    def __len__(self) -> int:
        return len(self._domains)

    # -- time-dependent questions (``now`` in microseconds since the epoch) --------------------------

    def is_host_stale(self, host: str, now: int) -> bool:
        """True if ``host`` has a HostRecord whose heartbeat is older than the stale limit.

        A host without a HostRecord is not stale: there is no evidence either way.
        """
        record = self._hosts.get(host)
        if record is None:
            return False
        limit_us = self._stale_after * record.heartbeat_interval_ms * 1000
        return now - record.heartbeat_at > limit_us

    def stale_hosts(self, now: int) -> frozenset[str]:
        return frozenset(h for h in self._hosts if self.is_host_stale(h, now))

    def unreachable_hosts(self) -> frozenset[str]:
        """Hosts whose latest HostRecord says ``LIBVIRT_UNREACHABLE``: their domains are unknown, kept."""
        return frozenset(h for h, r in self._hosts.items() if r.status is HostStatus.LIBVIRT_UNREACHABLE)

    def is_stale(self, uuid: str, now: int) -> bool:
        """True if the domain is in the view and its host is stale (its state may be outdated)."""
        record = self._domains.get(uuid)
        return record is not None and self.is_host_stale(record.host, now)

    def prune_graveyard(self, now: int) -> int:
        """Drop graveyard entries every live host's latest resync has made redundant (module doc).

        Returns how many were dropped. Does nothing while some live host has not completed a resync.
        """
        live = [h for h in self._hosts if not self.is_host_stale(h, now)]
        if not live or any(h not in self._listings for h in live):
            return 0
        horizon = min(self._listings[h].listed_at for h in live)
        doomed = [uuid for uuid, version in self._graveyard.items() if version < horizon]
        for uuid in doomed:
            del self._graveyard[uuid]
        return len(doomed)

    # -- internals ---------------------------------------------------------------------------------

    def _put(self, record: DomainRecord, held: DomainRecord | None) -> None:
        """Hold ``record`` in place of ``held``, the record the view held for its UUID (None: none)."""
        uuid = record.uuid
        self._domains[uuid] = record
        if held is not None and held.host == record.host:
            return  # the common update: indexed under its host already, and never in the graveyard
        if held is not None:
            self._unindex(held)
        uuids = self._by_host.get(record.host)
        if uuids is None:
            self._by_host[record.host] = {uuid}
        else:
            uuids.add(uuid)
        self._graveyard.pop(uuid, None)

    def _remove(
        self, uuid: str, version: int, cause: ChangeCause, source: Offset | None
    ) -> tuple[Change, ...]:
        """Take ``uuid`` out of the view, remembering ``version`` (the highest seen) in the graveyard."""
        self._graveyard[uuid] = max(version, self._graveyard.get(uuid, version))
        held = self._domains.pop(uuid, None)
        if held is None:
            return ()
        self._unindex(held)
        return (Change(ChangeType.DELETED, uuid, held, None, cause, source),)

    def _unindex(self, record: DomainRecord) -> None:
        uuids = self._by_host.get(record.host)
        if uuids is not None:
            uuids.discard(record.uuid)
            if not uuids:
                del self._by_host[record.host]


def _with_liveness(record: HostRecord, beat: HostRecord) -> HostRecord:
    """``record`` (its resync and inventory) with ``beat``'s liveness."""
    return replace(record, agent=beat.agent, heartbeat_at=beat.heartbeat_at, status=beat.status,
                   heartbeat_interval_ms=beat.heartbeat_interval_ms)
