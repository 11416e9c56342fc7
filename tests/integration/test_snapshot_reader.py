"""The snapshot reader's grouped reads against a real libvirtd, checked by libvirt's own answers.

A group is each domain's XML, then one ``virDomainListGetStats`` filtered by persistence (a second one
for the transient domains). Its state, reason, flags and XML must be what libvirt's per-domain calls
(``state``, ``isPersistent``, ``isActive``, ``XMLDesc``) say of the same domains, with the test driver
and with QEMU, and a domain gone before its read must read as gone, also when it is asked about
before any XML (its events say it is gone, or most recent reads found their domains gone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt
import pytest

from bridge.agent.domain_states import existing
from bridge.agent.libvirt_names import reason_name, state_name
from bridge.agent.snapshot import DomainSnapshot, SnapshotReader, SnapshotRequest
from bridge.core.version_clock import wall_clock_micros
from tests.support.domains import qemu_xml, remove_domains, unique_name, xml_for_test_driver


class _Session:
    """The reader's view of one real read-only connection (the agent's is ``LibvirtSession``)."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self._conn = conn
        self.marked_lost = 0

    def connection(self) -> libvirt.virConnect:
        return self._conn

    def mark_lost(self) -> None:
        self.marked_lost += 1


@pytest.fixture
def read_only(libvirt_host) -> Iterator[libvirt.virConnect]:
    conn = libvirt.openReadOnly(libvirt_host.test_uri)
    yield conn
    conn.close()


def _as_libvirt_says(dom: libvirt.virDomain) -> tuple[str, str, str, bool, bool, str]:
    state, reason = dom.state()
    return (dom.UUIDString(), state_name(state), reason_name(state, reason), bool(dom.isPersistent()),
            bool(dom.isActive()), dom.XMLDesc(0))


def _as_read(snap: DomainSnapshot) -> tuple[str, str, str, bool, bool, str]:
    return snap.uuid, snap.state, snap.reason, snap.persistent, snap.active, snap.xml


def test_a_group_reads_what_libvirt_says_of_each_domain_with_the_test_driver(libvirt_host, test_conn, read_only):
    prefix = unique_name("group")
    shut_off = test_conn.defineXML(xml_for_test_driver(f"{prefix}-off"))
    running = test_conn.defineXML(xml_for_test_driver(f"{prefix}-on"))
    running.create()
    paused = test_conn.defineXML(xml_for_test_driver(f"{prefix}-paused"))
    paused.create()
    paused.suspend()
    transient = test_conn.createXML(xml_for_test_driver(f"{prefix}-transient"))
    gone = test_conn.defineXML(xml_for_test_driver(f"{prefix}-gone"))
    try:
        reader = SnapshotReader(_Session(read_only), wall_clock_micros)
        doms = [shut_off, running, paused, transient]
        assert reader.read(gone.UUIDString()) is not None  # its handle is held: the XML call fails, not a lookup
        gone.undefine()
        results = reader.read_many([SnapshotRequest(d.UUIDString()) for d in [*doms[:2], gone, *doms[2:]]])
        want = [_as_libvirt_says(d) for d in doms]
        assert results[2] is None, "undefined before the read: gone"
        got = [_as_read(r) for r in results if isinstance(r, DomainSnapshot)]
        assert got == want
        assert [w[3] for w in want] == [True, True, True, False], "both filters were needed"
        assert [s.name for s in results if isinstance(s, DomainSnapshot)] == [d.name() for d in doms]
    finally:
        remove_domains(test_conn, prefix)


def test_domains_likely_gone_read_as_gone_or_in_full_as_libvirt_has_them(libvirt_host, test_conn, read_only):
    prefix = unique_name("gone")
    undefined = test_conn.defineXML(xml_for_test_driver(f"{prefix}-undefined"))
    running = test_conn.defineXML(xml_for_test_driver(f"{prefix}-running"))
    running.create()
    churned = [test_conn.defineXML(xml_for_test_driver(f"{prefix}-churn{n}")) for n in range(4)]
    kept = test_conn.defineXML(xml_for_test_driver(f"{prefix}-kept"))
    try:
        reader = SnapshotReader(_Session(read_only), wall_clock_micros)
        uuids = [d.UUIDString() for d in (undefined, running, *churned, kept)]
        assert all(reader.read(u) is not None for u in uuids)  # handles held, as the event callback hands them
        undefined.undefine()
        running.undefine()  # still running: transient now, not gone
        gone, still = reader.read_many([SnapshotRequest(u, likely_gone=True) for u in uuids[:2]])
        assert gone is None
        assert isinstance(still, DomainSnapshot) and _as_read(still) == _as_libvirt_says(running)
        assert not still.persistent

        # A churn: most reads find their domain gone, so a group of events that do not say so (each
        # domain's DEFINED) is asked about first too; what exists still reads as libvirt has it.
        for dom in churned:
            dom.undefine()
        assert reader.read_many([SnapshotRequest(u) for u in uuids[2:4]]) == [None, None]
        *churn, there = reader.read_many([SnapshotRequest(u) for u in uuids[4:]])
        assert churn == [None, None]
        assert isinstance(there, DomainSnapshot) and _as_read(there) == _as_libvirt_says(kept)
    finally:
        remove_domains(test_conn, prefix)


def test_the_existence_check_leaves_out_exactly_the_gone_domains_with_the_test_driver(libvirt_host, test_conn,
                                                                                     read_only):
    # What the reader's fakes assume of virDomainListGetStats without a filter: a gone domain is left
    # out silently, not an error, and every domain that exists is answered, transient or not.
    prefix = unique_name("exists")
    gone = test_conn.defineXML(xml_for_test_driver(f"{prefix}-gone"))
    running = test_conn.defineXML(xml_for_test_driver(f"{prefix}-running"))
    running.create()
    shut_off = test_conn.defineXML(xml_for_test_driver(f"{prefix}-off"))
    transient = test_conn.createXML(xml_for_test_driver(f"{prefix}-transient"))
    try:
        doms = [read_only.lookupByUUIDString(d.UUIDString()) for d in (gone, running, shut_off, transient)]
        gone.undefine()
        running.undefine()  # still running: transient now
        assert existing(read_only, doms) == {d.UUIDString() for d in (running, shut_off, transient)}
    finally:
        remove_domains(test_conn, prefix)


@pytest.mark.qemu
def test_a_group_reads_what_libvirt_says_of_each_domain_with_qemu(libvirt_host, tmp_path):
    conn = libvirt.open(libvirt_host.qemu_uri)
    read_only = libvirt.openReadOnly(libvirt_host.qemu_uri)
    prefix = unique_name("qemu-group")
    try:
        shut_off = conn.defineXML(qemu_xml(f"{prefix}-off", str(tmp_path / "off.log")))
        transient = conn.createXML(qemu_xml(f"{prefix}-transient", str(tmp_path / "transient.log")))
        paused = conn.createXML(qemu_xml(f"{prefix}-paused", str(tmp_path / "paused.log")),
                                libvirt.VIR_DOMAIN_START_PAUSED)
        doms = [shut_off, transient, paused]
        reader = SnapshotReader(_Session(read_only), wall_clock_micros)
        results = reader.read_many([SnapshotRequest(d.UUIDString()) for d in doms])
        assert [_as_read(r) if isinstance(r, DomainSnapshot) else r for r in results] == \
            [_as_libvirt_says(d) for d in doms]
        assert [r.persistent for r in results if isinstance(r, DomainSnapshot)] == [True, False, False]
        handles = [read_only.lookupByUUIDString(d.UUIDString()) for d in doms]
        shut_off.undefine()
        assert existing(read_only, handles) == {transient.UUIDString(), paused.UUIDString()}, "only the gone left out"
    finally:
        remove_domains(conn, prefix)
        with contextlib.suppress(libvirt.libvirtError):
            read_only.close()
        conn.close()
