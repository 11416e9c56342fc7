"""Fixtures for tests that run the agent against the real broker and libvirtd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from devenv import KafkaCluster, LibvirtHost
from tests.support.agent_proc import AgentProcess
from tests.support.recorder import EventRecorder
from tests.support.topics import unique_topics


@pytest.fixture
def topics() -> tuple[str, str]:
    """A fresh (domains, hosts) topic pair; the agent creates them."""
    return unique_topics()


@pytest.fixture
def agent_factory(
    tmp_path: Path, kafka: KafkaCluster, topics: tuple[str, str]
) -> Iterator[Callable[..., AgentProcess]]:
    """Make agent subprocesses; every one is killed at teardown, pass or fail."""
    made: list[AgentProcess] = []

    def make(uri: str, host_id: str = "host1", **kw: object) -> AgentProcess:
        agent = AgentProcess(tmp_path, uri, kafka.bootstrap_servers, topics[0], topics[1], host_id=host_id,
                             **kw)  # type: ignore[arg-type]
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.kill()


@pytest.fixture
def test_conn(libvirt_host: LibvirtHost) -> Iterator[libvirt.virConnect]:
    """A read-write connection to the daemon's shared test driver."""
    conn = libvirt.open(libvirt_host.test_uri)
    yield conn
    conn.close()


@pytest.fixture
def recorder(libvirt_host: LibvirtHost, libvirt_event_loop: None) -> Iterator[EventRecorder]:
    """libvirt's own event stream for the test driver, recorded in the test process."""
    rec = EventRecorder(libvirt_host.test_uri)
    yield rec
    rec.close()
