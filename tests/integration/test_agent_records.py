"""The agent against the real broker and libvirtd's test driver (issue 2, must-show 1, 3, 5)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid as uuid_mod

import libvirt

from bridge.records import RecordKind
from devenv import wait_until
from tests.support.checks import (
    assert_java_partitioning,
    assert_latest_matches_libvirt,
    assert_versions_increase_per_key,
    by_uuid,
    decode_log,
    published_events,
    wait_all_published,
)
from tests.support.domains import remove_domains, unique_name, xml_for_test_driver
from tests.support.topics import read_all


def test_domain_created_paused_reports_every_event_in_version_order(kafka, libvirt_host, topics, agent_factory,
                                                                     test_conn, recorder):
    """The seed's point 1. The test driver refuses VIR_DOMAIN_START_PAUSED, so the domain is defined,
    started and paused back to back; the QEMU test covers START_PAUSED itself."""
    agent = agent_factory(libvirt_host.test_uri).start()
    dom = test_conn.defineXML(xml_for_test_driver(unique_name("paused")))
    dom.create()
    dom.suspend()
    uuid = dom.UUIDString()
    log = wait_all_published(kafka.bootstrap_servers, topics[0], recorder, {uuid})
    records = by_uuid(log)[uuid]
    assert [r.version for r in records] == sorted({r.version for r in records})
    assert records[-1].state == "PAUSED" and records[-1].active
    assert published_events(records) == [("LIFECYCLE", "DEFINED", "ADDED"), ("LIFECYCLE", "STARTED", "BOOTED"),
                                         ("LIFECYCLE", "SUSPENDED", "PAUSED")]
    assert_latest_matches_libvirt(test_conn, log, {uuid})
    dom.destroy()
    dom.undefine()
    agent.check_alive()


def test_transient_domain_made_persistent_ends_persistent_and_running(kafka, libvirt_host, topics, agent_factory,
                                                                      test_conn, recorder):
    agent_factory(libvirt_host.test_uri).start()
    name = unique_name("transient")
    uuid = str(uuid_mod.uuid4())
    test_conn.createXML(xml_for_test_driver(name, uuid), 0)
    test_conn.defineXML(xml_for_test_driver(name, uuid))
    log = wait_all_published(kafka.bootstrap_servers, topics[0], recorder, {uuid})
    final = by_uuid(log)[uuid][-1]
    assert final.persistent and final.active and final.state == "RUNNING"
    assert ("LIFECYCLE", "DEFINED", "ADDED") in published_events(by_uuid(log)[uuid])
    assert_latest_matches_libvirt(test_conn, log, {uuid})
    dom = test_conn.lookupByUUIDString(uuid)
    dom.destroy()
    dom.undefine()


def test_define_and_undefine_at_once_gives_one_deleted_record_with_both_events(kafka, libvirt_host, topics,
                                                                                agent_factory, test_conn, recorder):
    """The seed's point 2: the Defined event's domain is already gone when the agent reads it."""
    agent = agent_factory(libvirt_host.test_uri).start()
    assert agent.proc is not None
    uuid = str(uuid_mod.uuid4())
    # Freeze the agent so both events wait in its socket; it must not crash or lose either.
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        dom = test_conn.defineXML(xml_for_test_driver(unique_name("blink"), uuid))
        dom.undefine()
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    log = wait_all_published(kafka.bootstrap_servers, topics[0], recorder, {uuid})
    records = by_uuid(log)[uuid]
    assert len(records) == 1
    assert records[0].kind is RecordKind.DELETED
    assert published_events(records) == [("LIFECYCLE", "DEFINED", "ADDED"), ("LIFECYCLE", "UNDEFINED", "REMOVED")]
    assert records[0].xml is None and records[0].state is None
    assert_latest_matches_libvirt(test_conn, log, {uuid})  # includes the tombstone after DELETED
    agent.check_alive()


def test_churn_every_event_in_exactly_one_record_and_latest_matches_libvirt(kafka, libvirt_host, topics,
                                                                             agent_factory, test_conn, recorder):
    """Must-show 3: 250 random operations from a second process, checked against libvirt's own stream."""
    agent = agent_factory(libvirt_host.test_uri).start()
    prefix = unique_name("churn")
    out = subprocess.run(
        [sys.executable, "-m", "devenv.churn", "--uri", libvirt_host.test_uri, "--ops", "250",
         "--seed", "20261125", "--prefix", prefix, "--pool", "10"],
        check=True, capture_output=True, text=True, timeout=300,
    )
    summary = json.loads(out.stdout)
    touched = set(summary["touched"])
    assert sum(summary["by_op"].values()) == 250 and len(summary["by_op"]) >= 8
    log = wait_all_published(kafka.bootstrap_servers, topics[0], recorder, touched, timeout=120)
    assert_versions_increase_per_key(log)
    assert_java_partitioning(log, partitions=3)
    assert_latest_matches_libvirt(test_conn, log, touched)
    total = sum(len(recorder.events(u)) for u in touched)
    assert total >= 250
    agent.check_alive()
    remove_domains(test_conn, prefix)


def test_vnc_password_is_never_published(kafka, libvirt_host, topics, agent_factory, test_conn, recorder):
    """Must-show 5: the secret appears in no message on either topic."""
    agent_factory(libvirt_host.test_uri).start()
    secret = "pw-" + uuid_mod.uuid4().hex[:12]
    dom = test_conn.defineXML(xml_for_test_driver(unique_name("vnc"), vnc_password=secret))
    dom.create()
    dom.suspend()
    dom.resume()
    uuid = dom.UUIDString()
    wait_all_published(kafka.bootstrap_servers, topics[0], recorder, {uuid})
    raws = read_all(kafka.bootstrap_servers, topics[0]) + read_all(kafka.bootstrap_servers, topics[1])
    xml_records = [r for r in raws if r.value and b"<graphics" in r.value]
    assert xml_records, "the records should carry the graphics element (without its password)"
    assert not any(secret.encode() in (r.value or b"") for r in raws)
    dom.destroy()
    dom.undefine()


def test_odd_domain_names_round_trip(kafka, libvirt_host, topics, agent_factory, test_conn, recorder):
    """Names with spaces, non-ASCII text, quotes and XML metacharacters reach consumers unchanged."""
    agent_factory(libvirt_host.test_uri).start()
    odd = f"odd {uuid_mod.uuid4().hex[:6]} ünïcødé ✓ 'q' \"dq\" & <lt> $(x) ; --"
    escaped = odd.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")
    dom = test_conn.defineXML(xml_for_test_driver(escaped))
    assert dom.name() == odd
    dom.create()
    uuid = dom.UUIDString()
    log = wait_all_published(kafka.bootstrap_servers, topics[0], recorder, {uuid})
    assert {r.name for r in by_uuid(log)[uuid]} == {odd}
    assert_latest_matches_libvirt(test_conn, log, {uuid})
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "tail", "--bootstrap-servers", kafka.bootstrap_servers, "--topic",
         topics[0], "--hosts-topic", topics[1], "--from-beginning", "--uuid", uuid, "--output", "json",
         "--idle-timeout", "3s", "--no-xml"],
        check=True, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines and all(line["name"] == odd for line in lines)
    dom.destroy()
    dom.undefine()


def test_the_persistent_flag_follows_undefine_and_define_of_a_running_domain(kafka, libvirt_host, topics,
                                                                               agent_factory, test_conn, recorder):
    """Each record's persistent flag comes from the reader's bulk state request, filtered by
    persistence: it must be libvirt's at the time, through undefine and define of a running domain."""
    agent = agent_factory(libvirt_host.test_uri).start()
    dom = test_conn.defineXML(xml_for_test_driver(unique_name("persist")))
    uuid = dom.UUIDString()
    expected: list[tuple[str, bool]] = []  # (the step's last event type, isPersistent after it)

    def published_types() -> list[str | None]:
        return [e.type for r in by_uuid(decode_log(read_all(kafka.bootstrap_servers, topics[0]))).get(uuid, [])
                for e in r.events]

    # The define's own record first: a start right after it could share that record, and the check
    # below drops the define's record.
    wait_until(lambda: "DEFINED" in published_types(), timeout=60, what="the define's record")

    def step(action: str, event_type: str) -> None:
        getattr(dom, action)() if action != "define" else test_conn.defineXML(dom.XMLDesc(0))
        expected.append((event_type, bool(dom.isPersistent())))
        # One step at a time, so no two steps' events share a record.
        wait_all_published(kafka.bootstrap_servers, topics[0], recorder, {uuid})

    try:
        for action, event_type in (("create", "STARTED"), ("suspend", "SUSPENDED"), ("resume", "RESUMED"),
                                   ("undefine", "UNDEFINED"), ("suspend", "SUSPENDED"), ("resume", "RESUMED"),
                                   ("define", "DEFINED"), ("suspend", "SUSPENDED")):
            step(action, event_type)
        records = by_uuid(decode_log(read_all(kafka.bootstrap_servers, topics[0])))[uuid]
        seen = [(r.events[-1].type, r.persistent) for r in records if r.events][1:]  # after the define's record
        assert seen == expected, seen
        assert [p for _t, p in expected] == [True, True, True, False, False, False, True, True]
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()
    agent.check_alive()
