"""Unreachable is not gone: a host whose agent cannot reach libvirt keeps its domains, flagged unknown."""

from __future__ import annotations

from dataclasses import replace

from bridge.consumer import Position, Snapshot, Store
from bridge.records import HostStatus
from tests.unit.test_consumer_store import SECOND, domain, host

A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"


def _snapshot(store: Store, now: int) -> Snapshot:
    return Snapshot(store.domains(), store.hosts(), Position({}), now, True, store.stale_hosts(now),
                    store.unreachable_hosts(), store.graveyard())


def test_an_unreachable_host_keeps_its_domains_flagged_until_a_resync_says_otherwise():
    store = Store()
    store.apply_domain(domain(A, 10, "hv1"))
    store.apply_domain(domain(B, 11, "hv2"))
    inventory = host("hv1", listed_at=5, uuids={A: 10}, heartbeat_at=20)
    store.apply_host(inventory)
    store.apply_host(host("hv2", listed_at=6, uuids={B: 11}, heartbeat_at=20))
    assert store.unreachable_hosts() == frozenset()

    # The agent lost libvirt: the same inventory, heartbeating with the new status.
    store.apply_host(replace(inventory, status=HostStatus.LIBVIRT_UNREACHABLE, heartbeat_at=30))
    snap = _snapshot(store, now=31)
    assert set(snap.domains) == {A, B}, "an unreachable host's domains must stay in the view"
    assert snap.unknown_reason(A) == "libvirt unreachable" and snap.is_unknown(A)
    assert snap.unknown_reason(B) is None and not snap.is_unknown(B)

    # Silence past the stale limit is reported as stale, which says more than the last status did.
    later = 30 + 4 * 30 * SECOND
    assert _snapshot(store, later).unknown_reason(A) == "stale"

    # libvirt is back and the resync found A gone: only that inventory removes it.
    store.apply_host(replace(inventory, status=HostStatus.UP, resync_id="r2", listed_at=40, domains=(),
                             heartbeat_at=41))
    snap = _snapshot(store, now=42)
    assert set(snap.domains) == {B} and store.unreachable_hosts() == frozenset()


def test_the_unknown_flags_survive_a_snapshot_round_trip():
    store = Store()
    store.apply_domain(domain(A, 10, "hv1"))
    store.apply_host(replace(host("hv1", listed_at=5, uuids={A: 10}, heartbeat_at=20),
                             status=HostStatus.LIBVIRT_UNREACHABLE))
    snap = _snapshot(store, now=21)
    again = Snapshot.from_json(snap.to_json())
    assert again.unreachable_hosts == frozenset({"hv1"}) and again.is_unknown(A)
