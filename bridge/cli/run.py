"""``libvirt-kafka-bridge run``: the per-host agent."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from bridge.agent.agent import Agent, AgentSettings
from bridge.agent.cpu_priority import DEFAULT_NICE, lower_priority, parse_nice
from bridge.agent.http_server import parse_address
from bridge.agent.publisher import producer_config
from bridge.agent.topics import DEFAULT_COMPACTION_LAG
from bridge.cli.common import KAFKA_OPTIONS
from bridge.config import Option, add_options, parse_bool, parse_duration, parse_positive_int, resolve
from bridge.core.version_clock import Clock, wall_clock_micros
from bridge.errors import UserError
from bridge.kafka_settings import KafkaSettings
from bridge.signals import DEFAULT_CONTROL_TOPIC

log = logging.getLogger(__name__)

TEST_CLOCK_OFFSET = "BRIDGE_TEST_CLOCK_OFFSET_MS"
"""Hidden, for tests of clock skew across a fleet: offset this agent's clock (milliseconds, may be negative)."""

OPTIONS: tuple[Option, ...] = (
    Option("libvirt_uri", "libvirt connection URI", "qemu:///system", metavar="URI"),
    Option("read_only", "open libvirt read-only (the agent only reads; never needs write access)", True,
           parse_bool, metavar="BOOL"),
    Option("host_id", "this host's id in records and the hosts topic key (default: the host name)",
           metavar="ID"),
    Option("state_dir", "directory for persisted versions and hand-offs", "/var/lib/libvirt-kafka-bridge",
           Path, metavar="DIR"),
    *KAFKA_OPTIONS,
    Option("resync_interval", "how often to relist every domain and publish the inventory", 300.0,
           parse_duration, metavar="DURATION"),
    Option("heartbeat_interval", "how often to refresh this host's HostRecord", 10.0, parse_duration,
           metavar="DURATION"),
    Option("partitions", "partitions of the domains topic when the agent creates it", 12, parse_positive_int,
           metavar="N"),
    Option("compaction_lag", "max.compaction.lag.ms of the domains, hosts and heartbeats topics when the agent "
           "creates them: older history is compacted to each domain's latest record, so a fresh consumer "
           "reads the fleet plus about two lags of changes, and a consumer further behind than that gets the "
           "latest record, not every one in between", DEFAULT_COMPACTION_LAG, parse_duration, metavar="DURATION"),
    Option("replication_factor", "replication factor of topics the agent creates (default: min(3, brokers))",
           None, parse_positive_int, metavar="N"),
    Option("shutdown_timeout", "on SIGTERM, how long to flush what was received", 10.0, parse_duration,
           metavar="DURATION"),
    Option("max_events_per_domain", "events queued per domain before the oldest are elided", 1000,
           parse_positive_int, metavar="N"),
    Option("kafka_connect_timeout", "at start-up, how long to wait for Kafka to answer", 10.0, parse_duration,
           metavar="DURATION"),
    Option("status_interval", "how often to log a progress line and write status.json", 30.0,
           parse_duration, metavar="DURATION"),
    Option("control_topic", "compacted topic the agent reads resync signals from (`resync`) and where the "
           "fleet's agents ask each other to re-assert a migrated domain; created if missing; empty: neither",
           DEFAULT_CONTROL_TOPIC, metavar="TOPIC"),
    Option("max_clock_skew", "how far apart the fleet's host clocks may be (keep them in sync with NTP); a "
           "host that takes a domain over from another versions that record this far ahead", 0.05,
           parse_duration, metavar="DURATION"),
    Option("nice", "CPU priority of the agent's threads, as nice(1): 0 never lowers it, 19 is the lowest. "
           "Above 0 the agent yields the CPU to libvirtd, its clients and the guests when the host is busy, and "
           "still takes what is idle; a lower priority already set (systemd's Nice=) is kept", DEFAULT_NICE,
           parse_nice, metavar="N"),
    Option("metrics_address", "serve Prometheus /metrics, /healthz and /readyz on HOST:PORT, e.g. "
           "127.0.0.1:9731, or :9731 on every address (default: off)", None, parse_address,
           metavar="HOST:PORT"),
)

DESCRIPTION = """\
Run the agent for this host. It publishes every libvirt domain event, with the domain's XML, state
and a per-domain version read after the event, to the compacted domains topic, and its inventory
and heartbeat to the hosts topic. At start, after every libvirt reconnect and every
--resync-interval it republishes every domain, so readers can rebuild exact state from the log.
SIGTERM or Ctrl-C: stop taking events, publish what was received, exit 0.
"""


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the per-host agent", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, OPTIONS)
    parser.set_defaults(execute=execute)


def settings_from(values: dict[str, Any]) -> AgentSettings:
    """Validated AgentSettings from resolved option values."""
    host_id = values["host_id"] or socket.gethostname()
    if not host_id.strip() or any(c.isspace() or not c.isprintable() for c in host_id):
        raise UserError(f"--host-id {host_id!r} must be non-empty printable text without spaces")
    if not values["libvirt_uri"].strip():
        raise UserError("--libvirt-uri must not be empty")
    kafka = KafkaSettings.from_values(values)
    if not kafka.bootstrap_servers.strip():
        raise UserError("--bootstrap-servers must not be empty")
    producer_config(kafka.client_config())  # refuse pass-through that breaks the guarantees, before any I/O
    kafka.check_distinct()
    return AgentSettings(
        host_id=host_id, state_dir=values["state_dir"], kafka=kafka, libvirt_uri=values["libvirt_uri"],
        read_only=values["read_only"], resync_interval=values["resync_interval"],
        heartbeat_interval=values["heartbeat_interval"], partitions=values["partitions"],
        compaction_lag=values["compaction_lag"],
        replication_factor=values["replication_factor"], shutdown_timeout=values["shutdown_timeout"],
        max_events_per_domain=values["max_events_per_domain"],
        kafka_connect_timeout=values["kafka_connect_timeout"], metrics_address=values["metrics_address"],
        max_clock_skew=values["max_clock_skew"], control_topic=values["control_topic"] or None,
    )


def _clock() -> Clock:
    """The wall clock, or, for the fleet's clock-skew tests only, one offset by ``$BRIDGE_TEST_CLOCK_OFFSET_MS``."""
    offset = os.environ.get(TEST_CLOCK_OFFSET)
    if not offset:
        return wall_clock_micros
    try:
        offset_us = int(float(offset) * 1000)
    except ValueError:
        raise UserError(f"{TEST_CLOCK_OFFSET}={offset!r} is not a number of milliseconds") from None
    log.warning("test clock: this agent's clock is offset by %+.3f ms (%s)", offset_us / 1000, TEST_CLOCK_OFFSET)
    return lambda: wall_clock_micros() + offset_us


def execute(args: argparse.Namespace) -> int:
    values = resolve(args, OPTIONS)
    settings = settings_from(values)
    # Before the agent starts a thread: each thread keeps the niceness it started with.
    log.debug("running at nice %d", lower_priority(values["nice"]))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    agent = Agent(settings, now=_clock())
    try:
        agent.start()
        while not stop.wait(values["status_interval"]):
            agent.write_status()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    clean = agent.stop()
    agent_status = agent.final_status or agent.status()
    log.info("stopped: %d records published for %d events%s", agent_status.records,
             agent_status.events_published, "" if clean else " (some records were left unpublished)")
    return 0 if clean else 1
