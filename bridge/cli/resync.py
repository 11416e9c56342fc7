"""``libvirt-kafka-bridge resync``: ask agents to relist their domains now (a signal on the control topic)."""

from __future__ import annotations

import argparse
import getpass
import logging
import socket
import sys
import time
from typing import Any

from confluent_kafka import Producer

from bridge.cli.common import KAFKA_OPTIONS
from bridge.config import Option, add_options, parse_duration, resolve
from bridge.consumer import Informer
from bridge.errors import UserError
from bridge.kafka_settings import KafkaSettings
from bridge.logging_setup import librdkafka_logger
from bridge.signals import ALL_HOSTS, DEFAULT_CONTROL_TOPIC, ResyncSignal

OPTIONS: tuple[Option, ...] = (
    *KAFKA_OPTIONS,
    Option("control_topic", "the compacted topic the agents read resync signals from", DEFAULT_CONTROL_TOPIC,
           metavar="TOPIC"),
    Option("wait", "wait this long for each named host's HostRecord answering the signal (0: don't wait)",
           0.0, parse_duration, metavar="DURATION"),
)

DESCRIPTION = """\
Ask the agents of the named hosts (or of every host) to resync now: list every domain, publish a RESYNC
record for each and a HostRecord with the new inventory, as they do at start and every
--resync-interval. The request is a signal on the control topic; the HostRecord that answers it carries
the signal's id in signal_id. Who may write to the control topic may do this: grant it with Kafka ACLs
(WRITE for operators, READ for the agents).
"""

EPILOG = """\
examples:
  libvirt-kafka-bridge resync --host hv-017 --wait 30s
  libvirt-kafka-bridge resync --all
"""


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "resync", help="ask agents to resync now", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--host", action="append", metavar="HOST_ID", help="this host's agent (repeatable)")
    target.add_argument("--all", action="store_true", help="every agent reading the control topic")
    add_options(parser, OPTIONS)
    parser.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    values = resolve(args, OPTIONS)
    kafka = KafkaSettings.from_values(values)
    topic: str = values["control_topic"]
    wait: float = values["wait"]
    if wait and args.all:
        raise UserError("--wait needs --host: with --all there is no list of hosts to wait for")
    hosts = [ALL_HOSTS] if args.all else list(dict.fromkeys(args.host))
    if any(not h.strip() or h == ALL_HOSTS for h in hosts if not args.all):
        raise UserError("--host must name a host id (use --all for every host)")
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    signals = [ResyncSignal.new(h, time.time_ns() // 1000, by) for h in hosts]
    informer = _started_informer(kafka) if wait else None
    try:
        _send(kafka, topic, signals)
        for s in signals:
            print(f"resync signal {s.id} sent to {'every host' if s.host == ALL_HOSTS else s.host} on {topic}")
        if informer is not None:
            return _wait_for_answers(informer, signals, wait)
        return 0
    finally:
        if informer is not None:
            informer.stop()


def _send(kafka: KafkaSettings, topic: str, signals: list[ResyncSignal]) -> None:
    errors: list[str] = []
    producer = Producer({**kafka.client_config(), "enable.idempotence": True, "partitioner": "murmur2_random",
                         "logger": librdkafka_logger("resync", max_level=logging.DEBUG),
                         "message.timeout.ms": 30_000})

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    for s in signals:
        producer.produce(topic, key=s.key(), value=s.value(), on_delivery=delivered)
    left = producer.flush(35)
    if left or errors:
        reason = errors[0] if errors else "no acknowledgement in time"
        raise UserError(f"cannot write the signal to {topic} at {kafka.bootstrap_servers}: {reason} "
                        f"(is an agent running there, so the topic exists, and may you write to it?)")


def _started_informer(kafka: KafkaSettings) -> Informer:
    informer = Informer(kafka, codec=kafka.codec())
    informer.start()
    return informer


def _wait_for_answers(informer: Informer, signals: list[ResyncSignal], wait: float) -> int:
    pending = {s.host: s.id for s in signals}
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        hosts = informer.list().hosts
        for host, signal_id in list(pending.items()):
            record = hosts.get(host)
            if record is not None and record.signal_id == signal_id:
                print(f"{host}: resync {record.resync_id} done, {len(record.domains)} domains in its inventory")
                del pending[host]
        time.sleep(0.2)
    for host in pending:
        print(f"{host}: no answer within {wait:g} s (is its agent running, and reading the control topic?)",
              file=sys.stderr)
    return 1 if pending else 0
