"""Where the test bed's single broker comes from: one seam, two sources.

- ``maven`` (the default, and what runs here): :class:`devenv.KafkaCluster`, Kafka 4 in KRaft mode
  from the Maven-resolved jars.
- ``testcontainers`` (``BRIDGE_TEST_KAFKA=testcontainers``): the Kafka container of the
  ``testcontainers`` package (``pip install 'libvirt-kafka-bridge[testcontainers]'``), for a developer
  with a Docker engine on a laptop. Without the package or an engine the tests that need the broker
  are skipped with a one-line reason, never silently.

Either yields an object with ``bootstrap_servers``; the fault tests that stop and start brokers use
:class:`devenv.KafkaCluster` directly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from devenv.kafka import KafkaCluster

SOURCE_ENV = "BRIDGE_TEST_KAFKA"
TESTCONTAINERS_IMAGE = "apache/kafka:4.1.0"


class Broker(Protocol):
    @property
    def bootstrap_servers(self) -> str: ...


class Unavailable(Exception):
    """The chosen source cannot run here; the message says why (tests skip with it)."""


@dataclass(frozen=True)
class _Container:
    bootstrap_servers: str


@contextlib.contextmanager
def kafka_broker(workdir: Path) -> Iterator[Broker]:
    """A running single broker from ``$BRIDGE_TEST_KAFKA``'s source, stopped on exit."""
    source = os.environ.get(SOURCE_ENV, "maven")
    if source == "maven":
        with KafkaCluster(workdir, nodes=1) as cluster:
            yield cluster
    elif source == "testcontainers":
        with _testcontainers_broker() as broker:
            yield broker
    else:
        raise Unavailable(f"{SOURCE_ENV}={source!r}: expected 'maven' or 'testcontainers'")


@contextlib.contextmanager
def _testcontainers_broker() -> Iterator[Broker]:
    try:
        from testcontainers.kafka import KafkaContainer  # noqa: PLC0415
    except ImportError:
        raise Unavailable(f"{SOURCE_ENV}=testcontainers: the testcontainers package is not installed "
                          "(pip install 'libvirt-kafka-bridge[testcontainers]')") from None
    try:
        import docker  # noqa: PLC0415

        docker.from_env().ping()
    except Exception as exc:  # docker raises many kinds for "no engine"
        raise Unavailable(f"{SOURCE_ENV}=testcontainers: no Docker engine reachable here "
                          f"({type(exc).__name__}); the Maven-jar broker is the default source") from None
    container: Any = KafkaContainer(TESTCONTAINERS_IMAGE).with_kraft()
    with container:
        yield _Container(container.get_bootstrap_server())
