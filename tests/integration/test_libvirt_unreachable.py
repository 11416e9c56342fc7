"""Unreachable is not gone (issue 8, must-show 5): libvirtd down on one host while another churns.

Host ``lost`` has its libvirtd SIGKILLed for ``BRIDGE_TEST_OUTAGE_S`` seconds (60 by default) while host
``busy`` churns. The whole time, ``lost``'s agent must keep heartbeating ``LIBVIRT_UNREACHABLE`` and every
consumer must keep its domains, flagged unknown: a consumer that reads silence as deletion would tell a
scheduler that running VMs are gone. After libvirtd returns, the views are exact on both hosts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from bridge.consumer import Informer
from bridge.kafka_settings import KafkaSettings
from bridge.records import HostStatus
from devenv import LibvirtHost, hold
from tests.support.agent_proc import AgentProcess, wait_for
from tests.support.domains import unique_name, xml_for_test_driver
from tests.support.topics import host_records, unique_topics
from tests.support.view import wait_view_exact

OUTAGE_S = float(os.environ.get("BRIDGE_TEST_OUTAGE_S", "60"))


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LibvirtHost]]:
    with LibvirtHost(tmp_path_factory.mktemp("lost"), name="lost") as lost, \
            LibvirtHost(tmp_path_factory.mktemp("busy"), name="busy") as busy:
        yield {"lost": lost, "busy": busy}


def test_a_host_without_libvirt_keeps_its_domains_flagged_unknown(tmp_path: Path, kafka, hosts):
    topics = unique_topics("unreachable")
    agents = {name: AgentProcess(tmp_path, h.test_uri, kafka.bootstrap_servers, *topics, host_id=name)
              for name, h in hosts.items()}
    conn = libvirt.open(hosts["lost"].test_uri)
    churn: subprocess.Popen[str] | None = None
    informer = Informer(KafkaSettings(kafka.bootstrap_servers, *topics))
    deleted: list[str] = []
    try:
        # Every test driver starts with the same built-in domain "test" (one UUID): two hosts would
        # both claim it. The lost host keeps it; the busy one drops it before its agent starts.
        with libvirt.open(hosts["busy"].test_uri) as busy:
            for dom in busy.listAllDomains(0):
                if dom.name() == "test":
                    dom.destroy()
                    dom.undefine()
        for agent in agents.values():
            agent.start()
        kept = []
        for i in range(3):
            dom = conn.defineXML(xml_for_test_driver(unique_name(f"kept{i}")))
            if i:
                dom.create()
            kept.append(dom.UUIDString())
        informer.add_handler(on_delete=lambda r: deleted.append(r.uuid))
        informer.start()
        assert informer.wait_for_sync(60), informer.last_error
        wait_for(lambda: set(kept) <= set(informer.list().domains), 30, "the lost host's domains in the view")

        churn = subprocess.Popen(
            [sys.executable, "-m", "devenv.churn", "--uri", hosts["busy"].test_uri, "--ops", str(int(OUTAGE_S * 5)),
             "--rate", "5", "--prefix", unique_name("busy"), "--seed", "8", "--pool", "8", "--keep-going"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn.close()
        hosts["lost"].kill()
        down_at = time.monotonic()

        def announced(status: HostStatus) -> bool:
            agents["lost"].check_alive()
            records = [h for h in host_records(kafka.bootstrap_servers, topics[1]) if h.host == "lost"]
            return bool(records) and records[-1].status is status

        wait_for(lambda: announced(HostStatus.LIBVIRT_UNREACHABLE), 30, "the lost host announced unreachable")
        # The whole outage: the domains stay, flagged, in the live view and in `state`.
        def still_kept() -> None:
            snap = informer.list()
            assert set(kept) <= set(snap.domains), "an unreachable host's domains left the view"
            assert all(snap.unknown_reason(u) == "libvirt unreachable" for u in kept), \
                {u: snap.unknown_reason(u) for u in kept}
            assert not set(kept) & set(deleted)

        hold(max(0.0, OUTAGE_S - (time.monotonic() - down_at)), check=still_kept, interval=1.0)
        state = subprocess.run(
            [sys.executable, "-m", "bridge", "state", "--output", "json", "--bootstrap-servers",
             kafka.bootstrap_servers, "--topic", topics[0], "--hosts-topic", topics[1]],
            capture_output=True, text=True, timeout=60, check=True)
        rows = {d["uuid"]: d for d in json.loads(state.stdout)}
        assert all(rows[u]["unknown"] and rows[u]["unknown_reason"] == "libvirt unreachable" for u in kept)
        assert not any(d["unknown"] for d in rows.values() if d["host"] == "busy")
        agents["lost"].check_alive()

        hosts["lost"].revive()
        wait_for(lambda: announced(HostStatus.UP), 60, "the lost host announced UP again")
        _out, err = churn.communicate(timeout=OUTAGE_S + 120)
        assert churn.returncode == 0, err
        # The test driver forgets its domains when libvirtd restarts: only the resync's inventory
        # may remove them, and it does; the busy host's churn is exact too.
        for name, h in hosts.items():
            with libvirt.open(h.test_uri) as c:
                wait_view_exact(kafka.bootstrap_servers, topics, c, name, timeout=90)
        print(f"\nlibvirtd down {OUTAGE_S:.0f}s on 'lost'; its {len(kept)} domains stayed in the view, "
              f"flagged unknown, until the resync after its return")
    finally:
        informer.stop()
        if churn is not None and churn.poll() is None:
            churn.kill()
            churn.communicate()
        if not hosts["lost"].running:
            hosts["lost"].revive()
        for agent in agents.values():
            agent.kill()
