"""Restarting the agent with its clock stepped back never lowers or repeats a version (must-show 4)."""

from __future__ import annotations

import time

from bridge.agent.agent import Agent, AgentSettings
from bridge.core.version_clock import wall_clock_micros
from bridge.kafka_settings import KafkaSettings
from tests.support.agent_proc import wait_for
from tests.support.checks import assert_versions_increase_per_key, decode_log
from tests.support.domains import remove_domains, unique_name, xml_for_test_driver
from tests.support.topics import read_all

HOUR_US = 3_600_000_000


def _settings(kafka, libvirt_host, topics, state_dir):
    return AgentSettings(
        host_id="restart-host", state_dir=state_dir,
        kafka=KafkaSettings(kafka.bootstrap_servers, topics[0], topics[1]),
        libvirt_uri=libvirt_host.test_uri, heartbeat_interval=1.0, partitions=3,
    )


def _run_agent(settings, now, work):
    agent = Agent(settings, now=now)
    agent.start()
    try:
        wait_for(lambda: agent.status().resyncs_completed >= 1, 30, "the first resync")
        work()
        wait_for(lambda: agent.status().domains_pending == 0 and agent.status().domains_in_flight == 0
                 and agent.status().events_received > 0, 30, "the agent to publish everything")
    finally:
        assert agent.stop()
    return agent.instance_id


def test_restart_with_clock_moved_back_never_lowers_a_version(kafka, libvirt_host, topics, test_conn, tmp_path,
                                                              libvirt_event_loop):
    settings = _settings(kafka, libvirt_host, topics, tmp_path / "state")
    prefix = unique_name("restart")
    doms = []

    def first_life():
        for i in range(5):
            d = test_conn.defineXML(xml_for_test_driver(f"{prefix}-{i}"))
            d.create()
            doms.append(d)

    first = _run_agent(settings, wall_clock_micros, first_life)
    old = [rec for _raw, rec in decode_log(read_all(kafka.bootstrap_servers, topics[0])) if rec is not None]
    old_max = max(r.version for r in old)
    assert all(r.agent.instance_id == first for r in old)

    def second_life():
        for d in doms:
            d.suspend()
        d = test_conn.defineXML(xml_for_test_driver(f"{prefix}-new"))  # a UUID never published before
        d.create()

    skewed_now = time.time_ns() // 1000 - HOUR_US
    second = _run_agent(settings, lambda: wall_clock_micros() - HOUR_US, second_life)
    log = decode_log(read_all(kafka.bootstrap_servers, topics[0]))
    new = [rec for _raw, rec in log if rec is not None and rec.agent.instance_id == second]
    assert len(new) >= 6 + 1  # a resync record per domain, then the events
    assert min(r.version for r in new) > old_max, "a version after the restart is not above every earlier one"
    assert all(r.observed_at < skewed_now + 600_000_000 for r in new), "the injected clock was not used"
    assert_versions_increase_per_key(log)
    remove_domains(test_conn, prefix)
