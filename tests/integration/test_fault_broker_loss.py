"""One broker of three lost (RF 3, min.insync.replicas 2): no acknowledged record is lost.

The agent creates its topics with RF 3 on a three-node cluster; a broker is killed with SIGKILL in
the middle of churn and started again later. Every event libvirt emitted must be on the topic once
the cluster heals, and a fresh view must equal libvirt's truth.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from tests.support.agent_proc import AgentProcess, wait_for
from tests.support.checks import assert_versions_increase_per_key, by_uuid, decode_log, published_events
from tests.support.domains import remove_domains, unique_name
from tests.support.recorder import EventRecorder
from tests.support.topics import read_all, unique_topics
from tests.support.view import wait_view_exact

pytestmark = pytest.mark.fleet


def test_agent_loses_nothing_acknowledged_when_a_broker_dies(kafka3, libvirt_host, test_conn, tmp_path,
                                                            libvirt_event_loop):
    topics = unique_topics("rf3")
    recorder = EventRecorder(libvirt_host.test_uri)
    agent = AgentProcess(tmp_path, libvirt_host.test_uri, kafka3.bootstrap_servers, *topics, host_id="rf3host")
    prefix = unique_name("rf3")
    try:
        agent.start()
        admin = AdminClient({"bootstrap.servers": kafka3.bootstrap_servers})
        meta = admin.list_topics(topics[0], timeout=10).topics[topics[0]]
        assert all(len(p.replicas) == 3 for p in meta.partitions.values())
        resource = ConfigResource(ConfigResource.Type.TOPIC, topics[0])
        config = admin.describe_configs([resource])[resource].result(30)
        assert config["min.insync.replicas"].value == "2"

        churn = subprocess.Popen(
            [sys.executable, "-m", "devenv.churn", "--uri", libvirt_host.test_uri, "--ops", "300",
             "--rate", "60", "--prefix", prefix, "--seed", "31", "--pool", "10"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: sum(len(recorder.events(u)) for u in recorder.uuids()) >= 60, 30, "churn to run")
            kafka3.stop_node(1, kill=True)
            out, err = churn.communicate(timeout=120)
            assert churn.returncode == 0, err
        finally:
            if churn.poll() is None:
                churn.kill()
        touched = set(json.loads(out)["touched"])
        kafka3.start_node(1)
        kafka3.wait_in_sync()

        def delivered() -> bool:
            per = by_uuid(decode_log(read_all(kafka3.bootstrap_servers, topics[0])))
            return all(published_events(per.get(u, [])) == recorder.events(u) for u in touched)

        wait_for(delivered, 90, "every event on the topic after the broker loss", interval=0.5)
        assert_versions_increase_per_key(decode_log(read_all(kafka3.bootstrap_servers, topics[0])))
        wait_view_exact(kafka3.bootstrap_servers, topics, test_conn, "rf3host")
        agent.check_alive()
    finally:
        agent.kill()
        recorder.close()
        remove_domains(test_conn, prefix)
