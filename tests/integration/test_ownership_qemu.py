"""Running here means owned here, on real QEMU (issue 8, must-show 1).

A domain restored from a save image taken while paused comes back ``PAUSED/MIGRATION`` with no job,
the same state and reason as an incoming migration's destination. A listing (agent restart, libvirtd
restart) must not take it for an incoming migration: the host keeps publishing it, its inventory
lists it, and after ``resume`` the fleet view shows it RUNNING where it runs.

The module has its own libvirtd (one test restarts it), so no other test is disturbed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from confluent_kafka import KafkaException

from bridge.records import HostRecord
from devenv import LibvirtHost
from tests.support.agent_proc import AgentProcess, wait_for
from tests.support.checks import by_uuid, decode_log, published_events
from tests.support.domains import qemu_xml, unique_name
from tests.support.recorder import EventRecorder
from tests.support.topics import host_records, read_all

pytestmark = pytest.mark.qemu

PREFIX = "own-"
HOST = "ownhost"
Ev = tuple[str, str | None, str | None]


@pytest.fixture(scope="module")
def own_host(tmp_path_factory) -> Iterator[LibvirtHost]:
    with LibvirtHost(tmp_path_factory.mktemp("own-libvirt"), name=HOST) as host:
        yield host


class Conns:
    """The test's read-write QEMU connection; :meth:`reopen` after a libvirtd restart."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.made = [libvirt.open(uri)]

    def __call__(self) -> libvirt.virConnect:
        return self.made[-1]

    def reopen(self) -> libvirt.virConnect:
        self.made.append(libvirt.open(self.uri))
        return self.made[-1]


@pytest.fixture
def conn(own_host: LibvirtHost) -> Iterator[Conns]:
    """At teardown every domain the test made is destroyed and undefined, managed-save image
    included, pass or fail."""
    conns = Conns(own_host.qemu_uri)
    yield conns
    with contextlib.closing(libvirt.open(own_host.qemu_uri)) as c:
        for dom in c.listAllDomains(0):
            if dom.name().startswith(PREFIX):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    for c in conns.made:
        with contextlib.suppress(libvirt.libvirtError):
            c.close()


@pytest.fixture
def recorders(own_host: LibvirtHost, libvirt_event_loop) -> Iterator[list[EventRecorder]]:
    """Independent listeners; append a new one after a libvirtd restart (the old one's link is dead)."""
    made = [EventRecorder(own_host.qemu_uri)]
    yield made
    for rec in made:
        with contextlib.suppress(libvirt.libvirtError):
            rec.close()


@pytest.fixture
def agent(own_host: LibvirtHost, agent_factory) -> AgentProcess:
    return agent_factory(own_host.qemu_uri, host_id=HOST)


def lifecycle(events: list[Ev]) -> list[Ev]:
    return [e for e in events if e[0] == "LIFECYCLE"]


def recorded(recs: list[EventRecorder], uuid: str) -> list[Ev]:
    return lifecycle([e for rec in recs for e in rec.events(uuid)])


def latest_host_record(agent: AgentProcess) -> HostRecord | None:
    try:
        mine = [h for h in host_records(agent.bootstrap, agent.hosts_topic) if h.host == agent.host_id]
    except KafkaException:  # a topic the agent just created may have no leader yet
        return None
    return mine[-1] if mine else None


def wait_resync(agent: AgentProcess, after: HostRecord | None, what: str) -> HostRecord:
    """The first HostRecord whose inventory comes from a resync completed after ``after``'s."""
    seen: dict[str, HostRecord] = {}

    def done() -> bool:
        agent.check_alive()
        rec = latest_host_record(agent)
        if rec is None or rec.resync_id is None or (after is not None and rec.resync_id == after.resync_id):
            return False
        seen["rec"] = rec
        return True

    wait_for(done, 60, what, interval=0.2)
    return seen["rec"]


def wait_published(agent: AgentProcess, recs: list[EventRecorder], uuid: str, what: str) -> None:
    """Until the published lifecycle events of ``uuid`` equal libvirt's own stream (each once, in order)."""
    state: dict[str, list[Ev]] = {}

    def caught_up() -> bool:
        agent.check_alive()
        try:
            records = by_uuid(decode_log(read_all(agent.bootstrap, agent.domains_topic))).get(uuid, [])
        except KafkaException:  # a topic the agent just created may have no leader yet
            return False
        state["published"] = lifecycle(published_events(records))
        return state["published"] == recorded(recs, uuid)

    try:
        wait_for(caught_up, 60, what, interval=0.3)
    except TimeoutError:
        raise AssertionError(f"{what}: libvirt said {recorded(recs, uuid)}, "
                             f"published {state.get('published')}") from None


def fleet_state(agent: AgentProcess) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "state", "--output", "json", "--bootstrap-servers", agent.bootstrap,
         "--topic", agent.domains_topic, "--hosts-topic", agent.hosts_topic],
        capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def assert_running_here(agent: AgentProcess, conn: libvirt.virConnect, uuid: str, since_restore: list[Ev],
                        recs: list[EventRecorder]) -> None:
    dom = conn.lookupByUUIDString(uuid)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    wait_published(agent, recs, uuid, "every lifecycle event published once")
    records = sorted(by_uuid(decode_log(read_all(agent.bootstrap, agent.domains_topic)))[uuid], key=lambda r: r.version)
    assert (records[-1].host, records[-1].state) == (HOST, "RUNNING")
    published = lifecycle(published_events(records))
    assert published[-len(since_restore):] == since_restore
    view = {d["uuid"]: d for d in fleet_state(agent)}
    assert uuid in view, f"`state` does not list the running domain: {sorted(view)}"
    assert (view[uuid]["host"], view[uuid]["state"], view[uuid]["stale"]) == (HOST, "RUNNING", False)
    host = latest_host_record(agent)
    assert host is not None and uuid in {e.uuid for e in host.domains}, "the host's inventory leaves it out"


def define_started(conn: libvirt.virConnect, tmp_path: Path) -> libvirt.virDomain:
    name = unique_name(PREFIX.rstrip("-"))
    dom = conn.defineXML(qemu_xml(name, str(tmp_path / f"{name}.serial.log")))
    dom.create()
    return dom


def paused_migration_no_job(dom: libvirt.virDomain) -> None:
    """What libvirt 9 shows for a domain restored paused (tests/fixtures/event_orders/restore_paused.json)."""
    assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION]
    assert dom.jobStats().get("type") == libvirt.VIR_DOMAIN_JOB_NONE


def save_paused_and_restore(conn: libvirt.virConnect, dom: libvirt.virDomain, image: Path,
                            recs: list[EventRecorder]) -> tuple[libvirt.virDomain, int]:
    """Suspend, save to ``image``, restore; returns the domain and how many lifecycle events preceded the restore."""
    uuid = dom.UUIDString()
    dom.suspend()
    dom.save(str(image))
    wait_for(lambda: ("LIFECYCLE", "STOPPED", "SAVED") in recorded(recs, uuid), 30, "STOPPED/SAVED")
    before = len(recorded(recs, uuid))
    conn.restore(str(image))
    dom = conn.lookupByUUIDString(uuid)
    paused_migration_no_job(dom)
    return dom, before


def test_restored_paused_then_agent_restart_then_resume(own_host, agent, conn, recorders, tmp_path):
    agent.start(wait_resync=False)
    first = wait_resync(agent, None, "the agent's first resync")
    dom, before = save_paused_and_restore(conn(), define_started(conn(), tmp_path), tmp_path / "save.img",
                                          recorders)
    uuid = dom.UUIDString()
    wait_published(agent, recorders, uuid, "the restore's events published")

    assert agent.terminate() == 0
    agent.start(wait_resync=False)
    listed = wait_resync(agent, first, "the restarted agent's resync")
    assert uuid in {e.uuid for e in listed.domains}, "the listing took the restored domain for an incoming one"

    dom.resume()
    wait_for(lambda: ("LIFECYCLE", "RESUMED", "UNPAUSED") in recorded(recorders, uuid)[before:], 30,
             "RESUMED/UNPAUSED after the restore")  # a boot emits one too, before the restore
    since = recorded(recorders, uuid)[before:]
    assert since == [("LIFECYCLE", "STARTED", "RESTORED"), ("LIFECYCLE", "SUSPENDED", "RESTORED"),
                     ("LIFECYCLE", "RESUMED", "UNPAUSED")]
    assert_running_here(agent, conn(), uuid, since, recorders)


def test_restored_paused_then_libvirtd_restart_then_resume(own_host, agent, conn, recorders, tmp_path,
                                                           libvirt_event_loop):
    agent.start(wait_resync=False)
    first = wait_resync(agent, None, "the agent's first resync")
    dom, before = save_paused_and_restore(conn(), define_started(conn(), tmp_path), tmp_path / "save.img",
                                          recorders)
    uuid = dom.UUIDString()
    wait_published(agent, recorders, uuid, "the restore's events published")

    own_host.restart()  # QEMU keeps running; the agent sees its close callback, reconnects and resyncs
    recorders.append(EventRecorder(own_host.qemu_uri))
    dom = conn.reopen().lookupByUUIDString(uuid)
    paused_migration_no_job(dom)  # kept across the restart
    listed = wait_resync(agent, first, "the agent's resync after the libvirtd restart")
    assert uuid in {e.uuid for e in listed.domains}, "the listing took the restored domain for an incoming one"

    dom.resume()
    wait_for(lambda: ("LIFECYCLE", "RESUMED", "UNPAUSED") in recorded(recorders, uuid)[before:], 30,
             "RESUMED/UNPAUSED after the restore")  # a boot emits one too, before the restore
    since = recorded(recorders, uuid)[before:]
    assert since == [("LIFECYCLE", "STARTED", "RESTORED"), ("LIFECYCLE", "SUSPENDED", "RESTORED"),
                     ("LIFECYCLE", "RESUMED", "UNPAUSED")]
    assert_running_here(agent, conn(), uuid, since, recorders)


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_managed_save_restored_by_create(own_host, agent, conn, recorders, tmp_path, paused):
    """``dom.managedSave()`` then ``dom.create()``; paused, it too comes back PAUSED/MIGRATION with no job.
    An agent restart lists it in between."""
    agent.start(wait_resync=False)
    first = wait_resync(agent, None, "the agent's first resync")
    dom = define_started(conn(), tmp_path)
    uuid = dom.UUIDString()
    if paused:
        dom.suspend()
    dom.managedSave()
    wait_for(lambda: ("LIFECYCLE", "STOPPED", "SAVED") in recorded(recorders, uuid), 30, "STOPPED/SAVED")
    assert dom.hasManagedSaveImage()
    before = len(recorded(recorders, uuid))
    dom.create()
    want: list[Ev] = [("LIFECYCLE", "STARTED", "RESTORED"),
                      ("LIFECYCLE", "SUSPENDED", "RESTORED") if paused else ("LIFECYCLE", "RESUMED", "FROM_SNAPSHOT")]
    wait_for(lambda: recorded(recorders, uuid)[before:] == want, 30, f"the managed-save start's events {want}")
    if paused:
        paused_migration_no_job(dom)
    wait_published(agent, recorders, uuid, "the managed-save start's events published")

    assert agent.terminate() == 0
    agent.start(wait_resync=False)
    listed = wait_resync(agent, first, "the restarted agent's resync")
    assert uuid in {e.uuid for e in listed.domains}

    if paused:
        dom.resume()
        want.append(("LIFECYCLE", "RESUMED", "UNPAUSED"))
        wait_for(lambda: recorded(recorders, uuid)[before:] == want, 30, "RESUMED/UNPAUSED")
    assert_running_here(agent, conn(), uuid, want, recorders)
