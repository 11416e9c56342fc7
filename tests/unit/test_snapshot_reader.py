"""The snapshot reader's grouped reads over a scripted host, and how the streamer cuts groups.

Each read of a group is its domain's XML, then the group's states and persistent flags come in one
``domainListGetStats`` filtered by persistence (a second for transient domains); domains likely gone
are first asked about in one unfiltered request. The same reads
against a real libvirtd are in ``tests/integration/test_snapshot_reader.py``.
"""

from __future__ import annotations

from typing import Any

import libvirt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.agent.libvirt_session import ConnectionLost
from bridge.agent.snapshot import DomainSnapshot, SnapshotReader, SnapshotRequest
from bridge.core.read_groups import read_groups
from bridge.core.version_clock import wall_clock_micros
from tests.fakes import FakeConnection, FakeDomain, FakeSession, libvirt_error
from tests.fakes.records import uuid_of


def _reader(*domains: FakeDomain) -> tuple[SnapshotReader, FakeConnection, FakeSession]:
    conn = FakeConnection(list(domains))
    session = FakeSession(conn)
    return SnapshotReader(session, wall_clock_micros), conn, session


def _requests(*numbers: int) -> list[SnapshotRequest]:
    return [SnapshotRequest(uuid_of(n)) for n in numbers]


def test_a_group_of_persistent_domains_costs_its_xmls_and_one_state_request():
    reader, conn, _ = _reader(*(FakeDomain(uuid_of(n), f"vm{n}", domain_id=n) for n in (1, 2, 3)))
    conn.lookupByUUIDString(uuid_of(2)).dom_state = libvirt.VIR_DOMAIN_PAUSED
    results = reader.read_many(_requests(3, 1, 2))
    assert [(r.uuid, r.name, r.state, r.persistent, r.active) for r in results if isinstance(r, DomainSnapshot)] == [
        (uuid_of(3), "vm3", "RUNNING", True, True), (uuid_of(1), "vm1", "RUNNING", True, True),
        (uuid_of(2), "vm2", "PAUSED", True, True)], "in the order asked"
    assert conn.count("domainListGetStats") == 1
    for n in (1, 2, 3):
        assert {m: conn.count(m, uuid_of(n)) for m in ("XMLDesc", "state", "isPersistent")} == \
            {"XMLDesc": 1, "state": 0, "isPersistent": 0}


def test_transient_domains_take_a_second_request_with_the_other_filter():
    reader, conn, _ = _reader(FakeDomain(uuid_of(1), "kept"), FakeDomain(uuid_of(2), "passing", persistent=False))
    one, two = reader.read_many(_requests(1, 2))
    assert isinstance(one, DomainSnapshot) and one.persistent
    assert isinstance(two, DomainSnapshot) and not two.persistent
    assert conn.count("domainListGetStats") == 2
    assert conn.count("domainListGetStats", uuid_of(1)) == 1, "the second request asks only for the rest"


class _VanishingDomain(FakeDomain):
    """Answers its XML, then is gone before the state request (undefined between the two)."""

    def XMLDesc(self, flags: int = 0) -> str:
        xml = super().XMLDesc(flags)
        assert self.conn is not None
        self.conn.remove(self.uuid)
        return xml


def test_a_domain_gone_before_its_xml_or_before_its_state_reads_as_none_and_the_others_still_read():
    reader, conn, _ = _reader(FakeDomain(uuid_of(1), "stays"), _VanishingDomain(uuid_of(2), "between"),
                              FakeDomain(uuid_of(3), "gone"))
    for n in (1, 2, 3):
        reader.read(uuid_of(n))  # handles held, so the gone ones fail at their calls, not at a lookup
    conn.remove(uuid_of(3))
    one, two, three = reader.read_many(_requests(1, 2, 3))
    assert isinstance(one, DomainSnapshot) and one.name == "stays"
    assert two is None, "left out of the state request: gone"
    assert three is None
    assert reader.read(uuid_of(1)) is not None


class _FlippingConnection(FakeConnection):
    """Makes the transient domains persistent right after the first filtered state request, as a
    define between the two requests would."""

    def domainListGetStats(self, doms: list[FakeDomain], stats: int = 0,
                           flags: int = 0) -> list[tuple[FakeDomain, dict[str, Any]]]:
        found = super().domainListGetStats(doms, stats, flags)
        if flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PERSISTENT:
            for dom in doms:
                dom.persistent = True
        return found


def test_a_domain_whose_persistence_flips_between_the_two_state_requests_is_read_alone_not_gone():
    conn = _FlippingConnection([FakeDomain(uuid_of(1), "kept"), FakeDomain(uuid_of(2), "flips", persistent=False)])
    reader = SnapshotReader(FakeSession(conn), wall_clock_micros)
    one, two = reader.read_many(_requests(1, 2))
    assert isinstance(one, DomainSnapshot) and one.persistent
    assert isinstance(two, DomainSnapshot) and two.persistent, "in neither filtered answer, yet there: not a delete"
    assert [conn.count("state", uuid_of(n)) for n in (1, 2)] == [0, 1], "only the left-out one is asked alone"


def test_domains_the_events_say_are_gone_are_asked_about_together_and_cost_no_xml_when_gone():
    reader, conn, _ = _reader(FakeDomain(uuid_of(1), "undefined"), FakeDomain(uuid_of(2), "removed"),
                              FakeDomain(uuid_of(3), "undefined while running"), FakeDomain(uuid_of(4), "other"))
    for n in (1, 2, 3, 4):
        reader.read(uuid_of(n))  # handles held, as the event callback hands them over
    conn.remove(uuid_of(1))
    conn.remove(uuid_of(2))
    conn.lookupByUUIDString(uuid_of(3)).persistent = False
    asked, asked_four = conn.count("domainListGetStats"), conn.count("domainListGetStats", uuid_of(4))
    requests = [SnapshotRequest(uuid_of(n), likely_gone=True) for n in (1, 2, 3)] + [SnapshotRequest(uuid_of(4))]
    one, two, three, four = reader.read_many(requests)
    assert one is None and two is None
    assert isinstance(three, DomainSnapshot) and not three.persistent, "still there: read in full"
    assert isinstance(four, DomainSnapshot) and four.persistent
    assert [conn.count("XMLDesc", uuid_of(n)) for n in (1, 2, 3, 4)] == [1, 1, 2, 2], "no XML call for the gone"
    # One existence check (unfiltered), then the group's states (persistent, then transient for the rest).
    assert conn.count("domainListGetStats") - asked == 3
    assert conn.count("domainListGetStats", uuid_of(4)) - asked_four == 1, "not likely gone: not checked first"

    alone = reader.read_many([SnapshotRequest(uuid_of(4), likely_gone=True)])
    assert isinstance(alone[0], DomainSnapshot), "one alone: its XML call is the check"
    assert conn.count("domainListGetStats") - asked == 4


def test_while_most_reads_find_their_domain_gone_a_group_asks_which_exist_before_any_xml():
    # A define-undefine churn: the DEFINED event's read finds the domain gone before its UNDEFINED comes.
    reader, conn, _ = _reader(*(FakeDomain(uuid_of(n), f"vm{n}") for n in range(1, 13)))
    assert reader.read(uuid_of(12)) is not None
    for n in range(1, 12):
        reader.offer(conn, uuid_of(n), conn.lookupByUUIDString(uuid_of(n)))  # as the event callback does
    for n in range(1, 11):
        conn.remove(uuid_of(n))
    asked = conn.count("domainListGetStats")
    assert reader.read_many(_requests(1, 2)) == [None, None]  # no check first: recent reads found theirs
    assert conn.count("domainListGetStats") == asked
    group = (3, 4, 5, 6, 11)
    xml, asked = [conn.count("XMLDesc", uuid_of(n)) for n in group], conn.count("domainListGetStats")
    *gone, there = reader.read_many(_requests(*group))  # two of the last three reads found theirs gone
    assert gone == [None] * 4 and isinstance(there, DomainSnapshot)
    assert [conn.count("XMLDesc", uuid_of(n)) - x for n, x in zip(group, xml, strict=True)] == [0, 0, 0, 0, 1], \
        "only the domain that exists had its XML read"
    assert conn.count("domainListGetStats") - asked == 2, "the existence check, then the states"

    # The domains exist again (a define burst): the gone share decays, and the check with it.
    for _ in range(5):
        assert all(isinstance(r, DomainSnapshot) for r in reader.read_many(_requests(11, 12)))
    asked = conn.count("domainListGetStats")
    assert all(isinstance(r, DomainSnapshot) for r in reader.read_many(_requests(11, 12)))
    assert conn.count("domainListGetStats") - asked == 1, "the states only"


def test_a_read_refused_access_ends_the_existence_checks_whose_answer_access_rules_would_filter():
    reader, conn, _ = _reader(*(FakeDomain(uuid_of(n), f"vm{n}") for n in (1, 2, 3)))
    for n in (1, 2, 3):
        reader.read(uuid_of(n))
    hidden = conn.lookupByUUIDString(uuid_of(3))
    denied = libvirt_error(libvirt.VIR_ERR_ACCESS_DENIED, "access denied: 'domain:read'")

    def refused(flags: int = 0) -> str:
        raise denied

    hidden.XMLDesc = refused  # type: ignore[method-assign]
    assert reader.read_many(_requests(3)) == [denied], "retried, never read as gone"
    asked = conn.count("domainListGetStats")
    one, two = reader.read_many([SnapshotRequest(uuid_of(n), likely_gone=True) for n in (1, 2)])
    assert isinstance(one, DomainSnapshot) and isinstance(two, DomainSnapshot)
    assert conn.count("domainListGetStats") - asked == 1, "no existence check any more: the states only"


def test_an_xml_error_is_that_read_s_result_and_a_broken_connection_fails_the_group():
    reader, conn, session = _reader(FakeDomain(uuid_of(1), "fine"), FakeDomain(uuid_of(2), "odd"))
    odd = conn.lookupByUUIDString(uuid_of(2))
    failure = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: odd")

    def broken_xml(flags: int = 0) -> str:
        raise failure

    odd.XMLDesc = broken_xml  # type: ignore[method-assign]
    one, two = reader.read_many(_requests(1, 2))
    assert isinstance(one, DomainSnapshot)
    assert two is failure, "retried by the streamer; the others are not held back"

    conn.lose()
    with pytest.raises(ConnectionLost):
        reader.read_many(_requests(1))
    assert session.marked_lost == 1


def test_a_driver_without_bulk_stats_is_asked_each_domain_once_refused():
    reader, conn, _ = _reader(FakeDomain(uuid_of(1), "a"), FakeDomain(uuid_of(2), "b", persistent=False))
    conn.refuse_bulk_stats()
    one, two = reader.read_many(_requests(1, 2))
    assert isinstance(one, DomainSnapshot) and one.persistent
    assert isinstance(two, DomainSnapshot) and not two.persistent
    assert [conn.count("state", uuid_of(n)) for n in (1, 2)] == [1, 1]
    asked = conn.count("domainListGetStats")
    reader.read_many(_requests(1, 2))
    assert conn.count("domainListGetStats") == asked == 1, "not asked again after the refusal"
    assert [conn.count("isPersistent", uuid_of(n)) for n in (1, 2)] == [2, 2]


def test_a_failed_state_request_is_retried_for_every_domain_in_it_and_not_read_as_gone():
    reader, conn, _ = _reader(FakeDomain(uuid_of(1), "a"), FakeDomain(uuid_of(2), "b"))
    conn.refuse_bulk_stats(libvirt.VIR_ERR_INTERNAL_ERROR)
    results = reader.read_many(_requests(1, 2))
    assert [r.get_error_code() for r in results if isinstance(r, libvirt.libvirtError)] == \
        [libvirt.VIR_ERR_INTERNAL_ERROR] * 2
    conn.refuse_bulk_stats(None)
    assert all(isinstance(r, DomainSnapshot) for r in reader.read_many(_requests(1, 2))), "still in bulk, still known"
    assert [conn.count("state", uuid_of(n)) for n in (1, 2)] == [0, 0]


@given(st.integers(0, 200), st.integers(1, 8), st.integers(1, 32))
def test_read_groups_keep_every_read_once_in_order_and_spread_them(n, readers, most):
    reads = list(range(n))
    groups = read_groups(reads, readers, most)
    assert [r for g in groups for r in g] == reads
    sizes = [len(g) for g in groups]
    assert all(0 < size <= most for size in sizes)
    assert not sizes or max(sizes) - min(sizes) <= 1, "spread evenly"
    assert len(groups) == min(n, max(readers, -(-n // most))), "every reader busy, and no smaller groups than that"


def test_read_groups_examples():
    assert [len(g) for g in read_groups(list(range(5)), 4, 16)] == [2, 1, 1, 1]
    assert [len(g) for g in read_groups(list(range(64)), 4, 16)] == [16] * 4
    assert [len(g) for g in read_groups(list(range(100)), 4, 16)] == [15, 15, 14, 14, 14, 14, 14]
    assert read_groups([], 4, 16) == []
