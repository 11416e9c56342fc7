"""The agent with real QEMU/TCG domains through libvirtd (issue 2, must-show 2)."""

from __future__ import annotations

import uuid as uuid_mod
from collections.abc import Iterator

import libvirt
import pytest

from tests.support.agent_proc import wait_for
from tests.support.checks import (
    assert_latest_matches_libvirt,
    by_uuid,
    decode_log,
    published_events,
    wait_all_published,
)
from tests.support.domains import qemu_xml, remove_domains, unique_name
from tests.support.recorder import EventRecorder
from tests.support.topics import read_all

pytestmark = pytest.mark.qemu


@pytest.fixture
def qemu_conn(libvirt_host) -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(libvirt_host.qemu_uri)
    yield conn
    remove_domains(conn, "qemu-")
    conn.close()


@pytest.fixture
def qemu_recorder(libvirt_host, libvirt_event_loop) -> Iterator[EventRecorder]:
    rec = EventRecorder(libvirt_host.qemu_uri)
    yield rec
    rec.close()


def _wait_record(bootstrap, topic, uuid, predicate, what):
    found = {}

    def seen():
        for rec in by_uuid(decode_log(read_all(bootstrap, topic))).get(uuid, []):
            if predicate(rec):
                found["rec"] = rec
                return True
        return False

    wait_for(seen, 30, what, interval=0.2)
    return found["rec"]


def test_real_domain_lifecycle(kafka, libvirt_host, topics, agent_factory, qemu_conn, qemu_recorder, tmp_path):
    agent_factory(libvirt_host.qemu_uri).start()
    bootstrap, topic = kafka.bootstrap_servers, topics[0]
    secret = "V" + uuid_mod.uuid4().hex[:7]  # QEMU allows at most 8 characters
    dom = qemu_conn.defineXML(qemu_xml(unique_name("qemu"), str(tmp_path / "serial.log"), vnc_password=secret))
    uuid = dom.UUIDString()

    dom.create()
    running = _wait_record(bootstrap, topic, uuid, lambda r: r.state == "RUNNING", "a RUNNING record")
    assert f"id='{dom.ID()}'" in (running.xml or ""), "the live XML carries the domain id"
    dom.suspend()
    _wait_record(bootstrap, topic, uuid, lambda r: r.state == "PAUSED" and r.reason == "USER", "a PAUSED record")
    dom.resume()
    _wait_record(bootstrap, topic, uuid, lambda r: r.state == "RUNNING" and r.reason == "UNPAUSED",
                 "RUNNING after resume")
    dom.reset(0)
    _wait_record(bootstrap, topic, uuid, lambda r: any(e.id == "REBOOT" for e in r.events), "a REBOOT event")
    dom.destroy()
    _wait_record(bootstrap, topic, uuid, lambda r: r.state == "SHUTOFF" and r.reason == "DESTROYED",
                 "SHUTOFF after destroy")
    dom.undefine()

    log = wait_all_published(bootstrap, topic, qemu_recorder, {uuid})
    events = published_events(by_uuid(log)[uuid])
    assert ("LIFECYCLE", "RESUMED", "UNPAUSED") in events and ("LIFECYCLE", "STARTED", "BOOTED") in events
    assert ("LIFECYCLE", "STOPPED", "DESTROYED") in events and ("LIFECYCLE", "UNDEFINED", "REMOVED") in events
    assert sum(1 for e in events if e[0] == "REBOOT") >= 1
    assert_latest_matches_libvirt(qemu_conn, log, {uuid})  # DELETED, then a tombstone
    everything = read_all(bootstrap, topic) + read_all(bootstrap, topics[1])
    assert not any(secret.encode() in (r.value or b"") for r in everything)


def test_real_domain_started_paused(kafka, libvirt_host, topics, agent_factory, qemu_conn, qemu_recorder, tmp_path):
    """The seed's point 1 with VIR_DOMAIN_START_PAUSED, on real QEMU."""
    agent_factory(libvirt_host.qemu_uri).start()
    dom = qemu_conn.defineXML(qemu_xml(unique_name("qemu"), str(tmp_path / "serial.log")))
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    uuid = dom.UUIDString()
    log = wait_all_published(kafka.bootstrap_servers, topics[0], qemu_recorder, {uuid})
    records = by_uuid(log)[uuid]
    assert [r.version for r in records] == sorted(r.version for r in records)
    assert records[-1].state == "PAUSED" and records[-1].active
    assert ("LIFECYCLE", "STARTED", "BOOTED") in published_events(records)
    assert_latest_matches_libvirt(qemu_conn, log, {uuid})
