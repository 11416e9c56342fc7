"""Heartbeats on their own topic, against a real agent, broker and libvirtd (test driver).

The agent heartbeats every second (``AgentProcess``) and resyncs once an hour here: the hosts topic
must get its HostRecord once, the heartbeats topic one message per second without the inventory, and
an Informer must see the host's liveness advance while its inventory stays the resync's. With
``--heartbeats-topic ''`` the 0.1 behaviour comes back: every heartbeat is a full HostRecord.
"""

from __future__ import annotations

import libvirt
from confluent_kafka.admin import AdminClient

from bridge.consumer import Informer
from bridge.kafka_settings import KafkaSettings
from tests.support.agent_proc import wait_for
from tests.support.domains import unique_name, xml_for_test_driver
from tests.support.topics import host_records


def test_heartbeats_leave_the_hosts_topic_alone_and_still_keep_the_host_live(kafka, libvirt_host, agent_factory,
                                                                              topics):
    with libvirt.open(libvirt_host.test_uri) as conn:  # held open: the test driver forgets on last close
        dom = conn.defineXML(xml_for_test_driver(unique_name("beat")))
        try:
            agent = agent_factory(libvirt_host.test_uri, extra=["--resync-interval", "1h"]).start()
            beats_topic = f"{topics[1]}.heartbeats"
            wait_for(lambda: len(host_records(kafka.bootstrap_servers, beats_topic)) >= 4, 30, "four heartbeats")
            hosts = host_records(kafka.bootstrap_servers, topics[1])
            beats = host_records(kafka.bootstrap_servers, beats_topic)
            # The status the agent announces at start (no resync yet), then the resync's inventory.
            assert [h.resync_id is None for h in hosts] == [True, False], hosts
            record = hosts[-1]
            inventory = [e.uuid for e in record.domains]
            assert dom.UUIDString() in inventory
            assert record.heartbeat_interval_ms == 3_600_000, "its refresh: the resync interval"
            assert all(b.domains == () and b.listed_at is None for b in beats)
            assert all(b.heartbeat_interval_ms == 1000 for b in beats)
            # Each names the latest completed resync: none at first, then the one the HostRecord lists.
            assert {b.resync_id for b in beats} <= {None, record.resync_id} and beats[-1].resync_id == record.resync_id
            assert [b.heartbeat_at for b in beats] == sorted({b.heartbeat_at for b in beats})

            with Informer(KafkaSettings(bootstrap_servers=kafka.bootstrap_servers, domains_topic=topics[0],
                                        hosts_topic=topics[1])) as informer:
                assert informer.wait_for_sync(30), informer.last_error
                seen = informer.list().hosts["host1"]
                assert seen.heartbeat_interval_ms == 1000 and seen.resync_id == record.resync_id
                wait_for(lambda: informer.list().hosts["host1"].heartbeat_at > seen.heartbeat_at + 1_500_000, 15,
                         "the informer's host heartbeat advancing")
                now = informer.list().hosts["host1"]
                assert [e.uuid for e in now.domains] == inventory, "the inventory stays the resync's"
                assert not informer.list().stale_hosts
            assert len(host_records(kafka.bootstrap_servers, topics[1])) == 2, "nothing more on the hosts topic"
            agent.check_alive()
        finally:
            dom.undefine()


def test_an_empty_heartbeats_topic_puts_heartbeats_back_on_the_hosts_topic(kafka, libvirt_host, agent_factory,
                                                                            topics):
    agent_factory(libvirt_host.test_uri, extra=["--resync-interval", "1h", "--heartbeats-topic", ""]).start()
    wait_for(lambda: len(host_records(kafka.bootstrap_servers, topics[1])) >= 4, 30, "four HostRecords")
    records = [r for r in host_records(kafka.bootstrap_servers, topics[1]) if r.resync_id is not None]
    assert len(records) >= 2 and len({r.resync_id for r in records}) == 1, "heartbeats repeating the inventory"
    assert all(len(r.domains) == len(records[0].domains) and r.heartbeat_interval_ms == 1000 for r in records)
    existing = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10).topics
    assert topics[1] in existing and f"{topics[1]}.heartbeats" not in existing, "no heartbeats topic made"
