"""Shared fixtures: real Kafka clusters and an isolated libvirtd, stopped on teardown even on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.agent.event_loop import LibvirtEventLoop
from devenv import KafkaCluster, LibvirtHost
from devenv.kafka_source import Broker, Unavailable, kafka_broker


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One KRaft broker on 127.0.0.1 for the whole session, from ``$BRIDGE_TEST_KAFKA``'s source
    (:mod:`devenv.kafka_source`: the Maven jars by default, or testcontainers where Docker runs)."""
    try:
        with kafka_broker(tmp_path_factory.mktemp("kafka")) as broker:
            yield broker
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def kafka3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three brokers (internal topics RF 3, min.insync.replicas 2), fresh per test module.

    Module scope because tests stop and start its nodes.
    """
    with KafkaCluster(tmp_path_factory.mktemp("kafka3"), nodes=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def libvirt_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtHost]:
    """An isolated libvirtd (test and QEMU drivers) for the whole session; see LibvirtHost URIs."""
    with LibvirtHost(tmp_path_factory.mktemp("libvirt"), name="host1") as host:
        yield host


@pytest.fixture(scope="session")
def libvirt_event_loop() -> Iterator[None]:
    """libvirt's default event loop, running in this process for the whole session.

    Request it before opening any connection that registers event or close callbacks. libvirt's loop
    is process-wide and must not be pumped by two threads, so this shares the agent's pump
    (:class:`bridge.agent.event_loop.LibvirtEventLoop`): an in-process agent in a test joins it.
    """
    with LibvirtEventLoop():
        yield
