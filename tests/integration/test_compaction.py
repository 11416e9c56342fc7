"""The topics' compaction lag, against a real agent, broker (its log cleaner) and libvirtd.

The agent creates its topics with ``max.compaction.lag.ms`` from ``--compaction-lag`` (default 1 min,
every topic), so what a fresh consumer reads stays bounded by the fleet, not the log's age. The
other tests run agents with a lag of an hour (they compare every event with the log); these run the
default, and a lag short enough to watch the broker's cleaner act on it.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from bridge.agent.topics import DEFAULT_COMPACTION_LAG
from tests.support.agent_proc import AgentProcess, wait_for
from tests.support.domains import remove_domains, unique_name, xml_for_test_driver
from tests.support.topics import read_all, unique_topics
from tests.support.view import wait_view_exact


def _agent(tmp_path: Path, uri: str, bootstrap: str, topics: tuple[str, str], lag: str | None,
           *extra: str) -> AgentProcess:
    agent = AgentProcess(tmp_path, uri, bootstrap, *topics, extra=list(extra))
    i = agent.args.index("--compaction-lag")
    if lag is None:
        del agent.args[i:i + 2]  # the agent's default
    else:
        agent.args[i + 1] = lag
    return agent


def _lags(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    out = {}
    for resource, future in admin.describe_configs(resources).items():
        out[resource.name] = int(future.result(30)["max.compaction.lag.ms"].value)
    return out


def _offsets_written(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-offsets"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_topics_are_created_with_the_default_compaction_lag(tmp_path, kafka, libvirt_host):
    topics = unique_topics("lag-default")
    agent = _agent(tmp_path, libvirt_host.test_uri, kafka.bootstrap_servers, topics, None)
    try:
        agent.start()
        default_ms = int(DEFAULT_COMPACTION_LAG * 1000)
        assert default_ms == 60_000
        assert _lags(kafka.bootstrap_servers, [topics[0], topics[1], f"{topics[1]}.heartbeats"]) == {
            topics[0]: default_ms, topics[1]: default_ms, f"{topics[1]}.heartbeats": default_ms}
    finally:
        agent.kill()


def test_the_cleaner_compacts_history_older_than_the_lag_and_the_view_stays_exact(tmp_path, kafka, libvirt_host):
    topics = unique_topics("lag-short")
    beats = f"{topics[1]}.heartbeats"
    # Resyncs every 2 s rewrite every domain, heartbeats every second: history piles up fast.
    agent = _agent(tmp_path, libvirt_host.test_uri, kafka.bootstrap_servers, topics, "2s", "--resync-interval", "2s")
    prefix = unique_name("lag")
    with libvirt.open(libvirt_host.test_uri) as conn:  # held open: the test driver forgets on last close
        try:
            for i in range(5):
                conn.defineXML(xml_for_test_driver(f"{prefix}-{i}"))
            agent.start()
            assert _lags(kafka.bootstrap_servers, [topics[0], beats]) == {topics[0]: 2000, beats: 2000}

            def compacted(topic: str) -> bool:
                agent.check_alive()
                # Offsets the cleaner removed: fewer messages than were ever written.
                return len(read_all(kafka.bootstrap_servers, topic)) < _offsets_written(kafka.bootstrap_servers, topic)

            wait_for(lambda: compacted(topics[0]), 60, "the cleaner to compact the domains topic", interval=1.0)
            wait_for(lambda: compacted(beats), 60, "the cleaner to compact the heartbeats topic", interval=1.0)
            wait_view_exact(kafka.bootstrap_servers, topics, conn, "host1", timeout=60)
            agent.check_alive()
        finally:
            agent.kill()
            remove_domains(conn, prefix)
