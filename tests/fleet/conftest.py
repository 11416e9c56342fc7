"""The fleet test bed: three libvirtd hosts in network namespaces, a three-node Kafka, three agents.

Module-scoped and stopped at teardown even on failure: the agents (SIGKILL if still running), the
watching informer, the event listeners, every domain on every host, the daemons, stray QEMUs and the
namespaces (``devenv.fleet.Fleet``), the brokers (``kafka3``). Between tests every domain is removed
and the agents are left caught up, so each test starts from an empty fleet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from bridge.cli.run import TEST_CLOCK_OFFSET
from bridge.kafka_settings import KafkaSettings
from devenv import KafkaCluster
from devenv.fleet import Fleet
from tests.fleet.support import FleetEnv, FleetRecorder, ViewWatch, agent_status, wait_agent_caught_up
from tests.support.agent_proc import AgentProcess, wait_for
from tests.support.topics import unique_topics

HOSTS = 3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet(tmp_path_factory.mktemp("fleet"), hosts=HOSTS) as f:
        yield f


CLOCK_OFFSETS_MS = {"hv1": 0.0, "hv2": -30.0, "hv3": 15.0}
"""Each agent's clock offset: within the default --max-clock-skew (50 ms) of each other."""


@pytest.fixture(scope="module")
def fleet_env(fleet: Fleet, kafka3: KafkaCluster, libvirt_event_loop: None,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetEnv]:
    """Agents in the root namespace, one per host (its own --host-id and state dir), on fresh topics."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised; don't print them too
    work: Path = tmp_path_factory.mktemp("fleet-agents")
    topics = unique_topics("fleet")
    host_ids = [f"hv{i + 1}" for i in range(len(fleet))]
    with contextlib.ExitStack() as stack:
        agents = []
        for i, host_id in enumerate(host_ids):
            # Clock skew within the bound the README names (--max-clock-skew, 50 ms): every fleet test
            # runs with one host's clock behind and one ahead, so versions must still rise per UUID.
            agent = AgentProcess(work, fleet.hosts[i].qemu_uri, kafka3.bootstrap_servers, *topics, host_id=host_id,
                                 extra=["--status-interval", "100ms"],
                                 env={TEST_CLOCK_OFFSET: str(CLOCK_OFFSETS_MS[host_id])})
            stack.callback(agent.kill)
            agents.append(agent)
        for agent in agents:
            agent.start(wait_resync=False)
        for agent in agents:
            def resynced(a: AgentProcess = agent) -> bool:
                a.check_alive()
                return bool(agent_status(a).get("resyncs_completed", 0) >= 1)

            wait_for(resynced, 60, f"the first resync of agent {agent.host_id}")
        conns = [fleet.open(i) for i in range(len(fleet))]
        for conn in conns:
            stack.callback(conn.close)
        recorder = FleetRecorder(fleet)
        stack.callback(recorder.close)
        watch = ViewWatch(KafkaSettings(kafka3.bootstrap_servers, *topics))
        stack.callback(watch.stop)
        watch.start()
        yield FleetEnv(fleet, kafka3, topics, agents, conns, recorder, watch, host_ids)


@pytest.fixture
def env(fleet_env: FleetEnv) -> Iterator[FleetEnv]:
    """The module's fleet, emptied of domains after the test, with every agent caught up."""
    yield fleet_env
    fleet_env.fleet.remove_domains()
    wait_for(lambda: not fleet_env.watch.informer.list().domains, 60, "the view to be empty after the cleanup")
    for agent in fleet_env.agents:
        if agent.proc is not None and agent.proc.poll() is None:
            wait_agent_caught_up(agent, timeout=60)
