"""The consumer's pure reconciliation core, against a model of a fleet publishing records."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.consumer import ApplyResult, Change, ChangeCause, ChangeType, Outcome, Position, Snapshot, Store
from bridge.records import AgentInfo, DomainRecord, HostRecord, HostStatus, InventoryEntry, RecordKind

AGENT = AgentInfo("agent-1", "0.1.0", "10.0.0")
HOSTS = ("hv1", "hv2", "hv3")
UUIDS = tuple(f"00000000-0000-4000-8000-{i:012x}" for i in range(1, 9))
STATES = ("RUNNING", "PAUSED", "SHUTOFF")
SECOND = 1_000_000


def domain(uuid: str, version: int, host: str = "hv1", kind: RecordKind = RecordKind.EVENT,
           state: str | None = "RUNNING", name: str | None = None) -> DomainRecord:
    deleted = kind is RecordKind.DELETED
    return DomainRecord(
        uuid=uuid, name=name or f"vm-{uuid[-2:]}", host=host, version=version, kind=kind, agent=AGENT,
        observed_at=version, state=None if deleted else state, reason=None if deleted else "BOOTED",
        active=not deleted and state == "RUNNING", persistent=True, xml=None if deleted else "<domain/>",
    )


def host(name: str, listed_at: int | None = None, uuids: dict[str, int] | None = None,
         heartbeat_at: int = 0, interval_ms: int = 30_000) -> HostRecord:
    return HostRecord(
        host=name, agent=AGENT, heartbeat_at=heartbeat_at, listed_at=listed_at,
        resync_id=None if listed_at is None else f"resync-{listed_at}",
        domains=tuple(InventoryEntry(u, v) for u, v in (uuids or {}).items()),
        heartbeat_interval_ms=interval_ms,
    )


# -- a fleet model -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tombstone:
    uuid: str


@dataclass(frozen=True)
class Beat:
    """A heartbeat, on the heartbeats topic: liveness only."""

    record: HostRecord


Item = DomainRecord | Tombstone | HostRecord | Beat


@dataclass
class Fleet:
    """Ground truth for a few hosts, and the records their agents publish, per key in log order.

    One clock for the fleet stands for the version rule (HLC, clocks in agreement): every version
    and listed_at is a fresh tick, so versions only grow per UUID, across hosts too.
    """

    clock: int = 1_000
    owner: dict[str, str] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    resync_started: dict[str, int] = field(default_factory=dict)
    listing: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)
    streams: dict[str, list[Item]] = field(default_factory=dict)
    last: dict[str, DomainRecord] = field(default_factory=dict)

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def emit(self, key: str, item: Item, duplicate: bool = False) -> None:
        stream = self.streams.setdefault(key, [])
        stream.append(item)
        if duplicate:  # at-least-once delivery: the same message again, right after itself
            stream.append(item)
        if isinstance(item, DomainRecord):
            self.last[item.uuid] = item

    def publish(self, uuid: str, kind: RecordKind = RecordKind.EVENT, duplicate: bool = False) -> None:
        h = self.owner[uuid]
        if h in self.down:
            return  # the agent is down: the event is lost; its restart resync repairs it
        self.emit(uuid, domain(uuid, self.tick(), h, kind, self.state[uuid]), duplicate)

    # Operations. Each may be a no-op when its preconditions do not hold.

    def create(self, uuid: str, h: str, duplicate: bool) -> None:
        if uuid in self.owner:
            return
        self.owner[uuid], self.state[uuid] = h, "RUNNING"
        self.publish(uuid, duplicate=duplicate)

    def change(self, uuid: str, state: str, duplicate: bool) -> None:
        if uuid in self.owner:
            self.state[uuid] = state
            self.publish(uuid, duplicate=duplicate)

    def delete(self, uuid: str, missed: bool, tombstone: bool) -> None:
        if uuid not in self.owner:
            return
        h = self.owner[uuid]
        if not missed and h not in self.down:
            self.publish(uuid, RecordKind.DELETED)
            if tombstone:  # else: the agent crashed between the DELETED record and the tombstone
                self.emit(uuid, Tombstone(uuid))
        del self.owner[uuid], self.state[uuid]

    def migrate(self, uuid: str, to: str) -> None:
        if uuid in self.owner and self.owner[uuid] != to:
            self.owner[uuid] = to  # the source goes silent; the destination's record is its claim
            self.publish(uuid)

    def crash(self, h: str) -> None:
        self.down.add(h)
        self.resync_started.pop(h, None)

    def restart(self, h: str) -> None:
        if h in self.down:
            self.down.discard(h)
            self.begin_resync(h)
            self.end_resync(h)

    def begin_resync(self, h: str) -> None:
        if h not in self.down and h not in self.resync_started:
            self.resync_started[h] = self.tick()  # listed_at: a version taken before the listing

    def end_resync(self, h: str) -> None:
        if h not in self.resync_started:
            return
        listed_at = self.resync_started.pop(h)
        inventory: dict[str, int] = {}
        for uuid in sorted(u for u, o in self.owner.items() if o == h):
            self.publish(uuid, RecordKind.RESYNC)
            inventory[uuid] = self.last[uuid].version
        self.listing[h] = (listed_at, inventory)
        self.emit("host:" + h, host(h, listed_at, inventory, heartbeat_at=self.tick()))

    def heartbeat(self, h: str) -> None:
        """On its own topic, so it interleaves with the host's HostRecords in any order."""
        if h not in self.down:
            self.emit("beat:" + h, Beat(host(h, heartbeat_at=self.tick(), interval_ms=10_000)))

    def replay(self, pick: int) -> None:
        """An old record delivered again, later (after a delete, a tombstone, ...)."""
        keys = sorted(k for k, items in self.streams.items() if any(isinstance(i, DomainRecord) for i in items))
        if keys:
            key = keys[pick % len(keys)]
            older = [i for i in self.streams[key] if isinstance(i, DomainRecord)]
            self.emit(key, older[(pick // len(keys)) % len(older)])

    def settle(self) -> None:
        """Every agent back up and through one more full resync: the log now says everything."""
        for h in HOSTS:
            self.restart(h)
            self.end_resync(h)
            self.begin_resync(h)
            self.end_resync(h)

    def truth(self) -> dict[str, DomainRecord]:
        return {u: self.last[u] for u in self.owner}


_uuid = st.sampled_from(UUIDS)
_host = st.sampled_from(HOSTS)
_ARGS = {
    "create": st.tuples(_uuid, _host, st.booleans()),
    "change": st.tuples(_uuid, st.sampled_from(STATES), st.booleans()),
    # mostly published (DELETED + tombstone); sometimes missed, sometimes cut short before the tombstone
    "delete": st.tuples(_uuid, st.sampled_from([False, False, True]), st.sampled_from([True, True, False])),
    "migrate": st.tuples(_uuid, _host),
    "crash": st.tuples(_host),
    "restart": st.tuples(_host),
    "begin_resync": st.tuples(_host),
    "end_resync": st.tuples(_host),
    "heartbeat": st.tuples(_host),
    "replay": st.tuples(st.integers(0, 1000)),
}
# Weighted towards creating and changing domains, so that the other operations have domains to act on.
_KINDS = ["create"] * 4 + ["change"] * 4 + ["delete"] * 2 + ["begin_resync", "end_resync"] * 2 + [
    "migrate", "crash", "restart", "heartbeat", "replay", "replay"]
OPERATIONS = st.sampled_from(_KINDS).flatmap(lambda kind: _ARGS[kind].map(lambda args: (kind, *args)))
FLEET_HISTORY = st.lists(OPERATIONS, min_size=10, max_size=100)


def build_fleet(operations: list[tuple[object, ...]]) -> Fleet:
    fleet = Fleet()
    for h in HOSTS:  # every agent starts with a resync
        fleet.begin_resync(h)
        fleet.end_resync(h)
    for name, *args in operations:
        getattr(fleet, str(name))(*args)
    return fleet


def interleave(streams: dict[str, list[Item]], rnd: random.Random) -> list[Item]:
    """Any merge of the streams that keeps each one's order, as a reader of several partitions sees."""
    queues = {k: list(v) for k, v in streams.items() if v}
    out: list[Item] = []
    while queues:
        key = rnd.choice(sorted(queues))
        out.append(queues[key].pop(0))
        if not queues[key]:
            del queues[key]
    return out


def apply_all(items: list[Item]) -> Store:
    """Apply ``items`` and check each change against a mirror built from the changes alone."""
    store = Store()
    mirror: dict[str, DomainRecord] = {}
    newest: dict[str, int] = {}
    for item in items:
        if isinstance(item, DomainRecord):
            result = store.apply_domain(item)
            newest[item.uuid] = max(item.version, newest.get(item.uuid, 0))
            # Never back in time: what the view shows of a key is the newest record read for it.
            held = store.get(item.uuid)
            assert held is None or held.version == newest[item.uuid]
        elif isinstance(item, Tombstone):
            result = store.apply_tombstone(item.uuid)
        elif isinstance(item, Beat):
            result = store.apply_heartbeat(item.record)
            assert not result.changes, "a heartbeat never changes the domains"
        else:
            result = store.apply_host(item)
        for change in result.changes:
            follow(mirror, change)
    assert mirror == store.domains()
    return store


def follow(mirror: dict[str, DomainRecord], change: Change) -> None:
    if change.type is ChangeType.ADDED:
        assert change.uuid not in mirror and change.new is not None
        mirror[change.uuid] = change.new
    elif change.type is ChangeType.UPDATED:
        assert mirror[change.uuid] == change.old and change.new is not None
        assert change.new.version > change.old.version
        mirror[change.uuid] = change.new
    else:
        assert mirror.pop(change.uuid) == change.old


FLEET_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FLEET_SETTINGS
@given(operations=FLEET_HISTORY, rnd=st.randoms(use_true_random=False))
def test_any_interleaving_ends_equal_to_the_fleet(operations, rnd):
    fleet = build_fleet(operations)
    fleet.settle()
    store = apply_all(interleave(fleet.streams, rnd))
    assert store.domains() == fleet.truth()
    # Each host's liveness is its newest word on either topic; its inventory, its newest HostRecord's.
    for h, held in store.hosts().items():
        words = [i.record if isinstance(i, Beat) else i for k in ("host:" + h, "beat:" + h)
                 for i in fleet.streams.get(k, [])]
        assert held.heartbeat_at == max(w.heartbeat_at for w in words if isinstance(w, HostRecord))
        last = fleet.streams["host:" + h][-1]
        assert isinstance(last, HostRecord)
        assert (held.listed_at, held.domains) == (last.listed_at, last.domains)


@FLEET_SETTINGS
@given(operations=FLEET_HISTORY, rnd=st.randoms(use_true_random=False))
def test_the_final_view_does_not_depend_on_the_interleaving(operations, rnd):
    # No settling: missed deletes may still be unrepaired, but every reader must agree on the result.
    fleet = build_fleet(operations)
    a = apply_all(interleave(fleet.streams, rnd))
    b = apply_all(interleave(fleet.streams, random.Random(rnd.random())))
    assert a.domains() == b.domains()
    assert a.graveyard() == b.graveyard()
    assert a.hosts() == b.hosts()


@FLEET_SETTINGS
@given(operations=FLEET_HISTORY, rnd=st.randoms(use_true_random=False),
       cut=st.integers(0, 10_000))
def test_a_view_restored_from_a_snapshot_continues_like_the_original(operations, rnd, cut):
    fleet = build_fleet(operations)
    fleet.settle()
    items = interleave(fleet.streams, rnd)
    cut %= len(items) + 1
    first = apply_all(items[:cut])
    snap = Snapshot(first.domains(), first.hosts(), Position(), 0, True, deleted=first.graveyard())
    snap = Snapshot.from_json(snap.to_json())
    resumed = Store.restore(snap.domains, snap.hosts, snap.deleted)
    for item in items[cut:]:
        if isinstance(item, DomainRecord):
            resumed.apply_domain(item)
        elif isinstance(item, Tombstone):
            resumed.apply_tombstone(item.uuid)
        elif isinstance(item, Beat):
            resumed.apply_heartbeat(item.record)
        else:
            resumed.apply_host(item)
    assert resumed.domains() == fleet.truth()


# -- focused examples ------------------------------------------------------------------------------------

U1, U2, U3 = UUIDS[:3]


def test_newer_record_updates_and_older_or_equal_is_skipped():
    store = Store()
    first = store.apply_domain(domain(U1, 10))
    assert first.outcome is Outcome.APPLIED
    assert [c.type for c in first.changes] == [ChangeType.ADDED]
    newer = domain(U1, 20, state="PAUSED")
    update = store.apply_domain(newer)
    assert update.changes == (Change(ChangeType.UPDATED, U1, domain(U1, 10), newer, ChangeCause.RECORD),)
    assert store.apply_domain(domain(U1, 15, state="SHUTOFF")).outcome is Outcome.OLDER
    assert store.apply_domain(newer).outcome is Outcome.OLDER  # a duplicate
    assert store.get(U1) == newer


def test_deleted_removes_and_an_older_record_cannot_resurrect_it_even_after_the_tombstone():
    store = Store()
    store.apply_domain(domain(U1, 10))
    deleted = store.apply_domain(domain(U1, 30, kind=RecordKind.DELETED))
    assert [(c.type, c.cause) for c in deleted.changes] == [(ChangeType.DELETED, ChangeCause.DELETED)]
    assert store.apply_tombstone(U1).outcome is Outcome.NO_OP
    # e.g. the previous owner's record, delivered late: the graveyard still knows version 30
    assert store.apply_domain(domain(U1, 20, host="hv2")).outcome is Outcome.OLDER
    assert store.get(U1) is None
    assert store.graveyard() == {U1: 30}
    # the same UUID defined again later is a new, newer domain
    assert store.apply_domain(domain(U1, 40)).changes[0].type is ChangeType.ADDED
    assert store.graveyard() == {}


def test_tombstone_alone_removes_and_remembers_the_version_it_removed():
    store = Store()
    store.apply_domain(domain(U1, 10))
    result = store.apply_tombstone(U1)
    assert [(c.type, c.cause, c.old) for c in result.changes] == [
        (ChangeType.DELETED, ChangeCause.TOMBSTONE, domain(U1, 10))]
    assert store.apply_domain(domain(U1, 10)).outcome is Outcome.OLDER


def test_inventory_removes_missed_deletes_only():
    store = Store()
    store.apply_domain(domain(U1, 10))               # listed below: stays
    store.apply_domain(domain(U2, 11))               # missing from the listing: deleted during an outage
    store.apply_domain(domain(U3, 60))               # newer than listed_at: created after the listing
    store.apply_domain(domain(UUIDS[3], 12, host="hv2"))  # another host's: not this listing's business
    result = store.apply_host(host("hv1", listed_at=50, uuids={U1: 51}))
    assert [(c.type, c.uuid, c.cause) for c in result.changes] == [
        (ChangeType.DELETED, U2, ChangeCause.INVENTORY)]
    assert set(store.domains()) == {U1, U3, UUIDS[3]}
    assert store.graveyard() == {U2: 11}
    # the same listing again (a heartbeat) changes nothing
    assert store.apply_host(host("hv1", listed_at=50, uuids={U1: 51}, heartbeat_at=5)).changes == ()


def test_a_record_the_inventory_already_listed_away_is_not_shown():
    # The hosts topic was read first: the record arrives after the listing that excludes it.
    store = Store()
    store.apply_host(host("hv1", listed_at=50, uuids={U1: 51}))
    result = store.apply_domain(domain(U2, 40))
    assert result.outcome is Outcome.LISTED_AWAY and result.changes == ()
    assert store.apply_domain(domain(U1, 40)).outcome is Outcome.APPLIED   # listed: its RESYNC follows
    assert store.apply_domain(domain(U3, 55)).outcome is Outcome.APPLIED   # after the listing
    assert set(store.domains()) == {U1, U3}


def test_a_migrated_domain_is_not_removed_by_the_old_hosts_inventory():
    store = Store()
    store.apply_domain(domain(U1, 10, host="hv1"))
    store.apply_domain(domain(U1, 20, host="hv2"))  # the destination's claim
    assert store.apply_host(host("hv1", listed_at=30)).changes == ()
    assert store.get(U1) == domain(U1, 20, host="hv2")
    # and the destination's inventory does remove it once it is gone there
    removed = store.apply_host(host("hv2", listed_at=40))
    assert [c.uuid for c in removed.changes] == [U1]


def test_an_older_listing_does_not_replace_a_newer_one():
    store = Store()
    store.apply_host(host("hv1", listed_at=50, uuids={U1: 51}))
    older = host("hv1", listed_at=20, uuids={}, heartbeat_at=7)
    assert store.apply_host(older).changes == ()
    assert store.hosts()["hv1"] == older  # liveness follows the log
    assert store.apply_domain(domain(U1, 52)).outcome is Outcome.APPLIED
    assert store.apply_domain(domain(U2, 30)).outcome is Outcome.LISTED_AWAY  # still judged by 50


def test_stale_host_flags_its_domains_and_never_deletes_them():
    store = Store(stale_after_intervals=3)
    store.apply_host(host("hv1", listed_at=1, heartbeat_at=100 * SECOND, interval_ms=10_000))
    store.apply_host(host("hv2", listed_at=1, heartbeat_at=100 * SECOND, interval_ms=60_000))
    store.apply_domain(domain(U1, 10, host="hv1"))
    store.apply_domain(domain(U2, 10, host="hv2"))
    store.apply_domain(domain(U3, 10, host="hv9"))  # no HostRecord yet: no evidence of staleness
    now = 100 * SECOND + 30 * SECOND
    assert store.stale_hosts(now) == frozenset()  # exactly 3 intervals is not yet stale
    now += 1
    assert store.stale_hosts(now) == {"hv1"}
    assert store.is_stale(U1, now) and not store.is_stale(U2, now) and not store.is_stale(U3, now)
    assert set(store.domains()) == {U1, U2, U3}
    assert Store(stale_after_intervals=10).is_host_stale("hv1", now) is False
    much_later = now + 3600 * SECOND
    assert store.stale_hosts(much_later) == {"hv1", "hv2"}
    assert len(store) == 3


def test_graveyard_is_pruned_once_every_live_host_has_listed_after_the_delete():
    store = Store()
    now = 1000 * SECOND
    store.apply_host(host("hv1", listed_at=5, heartbeat_at=now))
    store.apply_host(host("hv2", listed_at=5, heartbeat_at=now))
    store.apply_domain(domain(U1, 10, host="hv1"))
    store.apply_domain(domain(U1, 20, host="hv1", kind=RecordKind.DELETED))
    assert store.prune_graveyard(now) == 0
    store.apply_host(host("hv1", listed_at=30, heartbeat_at=now))
    assert store.prune_graveyard(now) == 0  # hv2 has not listed since the delete
    # hv2 stops heartbeating: it no longer holds the graveyard back
    assert store.prune_graveyard(now + 3600 * SECOND) == 0  # hv1 is stale then too
    store.apply_host(host("hv1", listed_at=30, heartbeat_at=now + 3600 * SECOND))
    assert store.prune_graveyard(now + 3600 * SECOND) == 1
    assert store.graveyard() == {}
    # a late older record from hv1 is still kept out: hv1's listing lists it away on arrival
    assert store.apply_domain(domain(U1, 10, host="hv1")).outcome is Outcome.LISTED_AWAY
    assert store.get(U1) is None


def test_a_live_host_that_never_listed_blocks_pruning():
    store = Store()
    store.apply_host(host("hv1", listed_at=30, heartbeat_at=0))
    store.apply_host(host("hv2", listed_at=None, heartbeat_at=0))
    store.apply_domain(domain(U1, 20, kind=RecordKind.DELETED))
    assert store.prune_graveyard(0) == 0
    assert store.apply_host_tombstone("hv2").outcome is Outcome.APPLIED
    assert store.prune_graveyard(0) == 1


def test_host_tombstone_forgets_the_host_but_keeps_its_domains():
    store = Store()
    store.apply_host(host("hv1", listed_at=5))
    store.apply_domain(domain(U1, 10))
    store.apply_host_tombstone("hv1")
    assert store.hosts() == {} and store.get(U1) is not None
    assert store.apply_host_tombstone("hv1").outcome is Outcome.NO_OP


def test_a_heartbeat_moves_liveness_never_the_inventory():
    store = Store(stale_after_intervals=3)
    store.apply_domain(domain(U1, 10))
    store.apply_host(host("hv1", listed_at=20, uuids={U1: 10}, heartbeat_at=30 * SECOND, interval_ms=300_000))
    # A heartbeat carries no inventory; even one that (wrongly) listed nothing removes nothing.
    beat = HostRecord(host="hv1", agent=AGENT, heartbeat_at=40 * SECOND, status=HostStatus.LIBVIRT_UNREACHABLE,
                      listed_at=99, heartbeat_interval_ms=10_000)
    assert store.apply_heartbeat(beat) == ApplyResult(Outcome.APPLIED)
    held = store.hosts()["hv1"]
    assert (held.heartbeat_at, held.status, held.heartbeat_interval_ms) == (40 * SECOND, HostStatus.LIBVIRT_UNREACHABLE,
                                                                            10_000)
    assert (held.listed_at, [e.uuid for e in held.domains]) == (20, [U1]) and store.get(U1) is not None
    # Stale by the heartbeat's interval (3 x 10 s), not the HostRecord's refresh interval (3 x 300 s).
    assert not store.is_host_stale("hv1", 69 * SECOND) and store.is_host_stale("hv1", 71 * SECOND)
    assert store.unreachable_hosts() == {"hv1"}
    # An older heartbeat changes nothing; a HostRecord older than the heartbeat brings its inventory only.
    assert store.apply_heartbeat(replace(beat, heartbeat_at=35 * SECOND, status=HostStatus.UP)).outcome is Outcome.OLDER
    store.apply_host(host("hv1", listed_at=50, uuids={}, heartbeat_at=38 * SECOND, interval_ms=300_000))
    held = store.hosts()["hv1"]
    assert (held.heartbeat_at, held.status, held.listed_at) == (40 * SECOND, HostStatus.LIBVIRT_UNREACHABLE, 50)
    assert store.get(U1) is None, "the newer inventory listed it away"


def test_a_heartbeat_before_any_host_record_makes_a_live_host_without_a_listing():
    store = Store()
    store.apply_domain(domain(U1, 10, host="hv2"))
    store.apply_heartbeat(HostRecord(host="hv2", agent=AGENT, heartbeat_at=5 * SECOND, heartbeat_interval_ms=10_000))
    assert store.hosts()["hv2"].listed_at is None and store.get(U1) is not None
    assert not store.is_host_stale("hv2", 6 * SECOND)
    assert store.prune_graveyard(6 * SECOND) == 0, "a live host that never listed blocks pruning"


def test_a_restored_domain_is_held_not_deleted_even_if_the_snapshot_lists_it_as_both():
    # A hand-built or merged Snapshot can; an update must not leave the stale graveyard entry behind,
    # where it would later skip a re-creation whose version lies below it.
    u = "00000000-0000-4000-8000-00000000000a"
    store = Store.restore({u: domain(u, 5)}, {}, graveyard={u: 9})
    assert store.graveyard() == {}
    store.apply_domain(domain(u, 6))
    store.apply_domain(domain(u, 7, kind=RecordKind.DELETED))
    assert store.apply_domain(domain(u, 8)).outcome is Outcome.APPLIED
    assert store.get(u) is not None
