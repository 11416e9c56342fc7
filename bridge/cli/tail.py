"""``libvirt-kafka-bridge tail``: decode and print the records on the topics."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from bridge.cli.common import KAFKA_OPTIONS
from bridge.config import Option, add_options, parse_duration, parse_positive_int, resolve
from bridge.errors import DecodeError, UserError
from bridge.kafka_problems import KAFKA_CONFIG_PLACES, ProblemWatcher, error_text
from bridge.kafka_settings import KafkaSettings
from bridge.logging_setup import librdkafka_logger
from bridge.records import DomainRecord
from bridge.serde import DomainTombstone, Heartbeat, HostTombstone, MessageDecoder

OPTIONS: tuple[Option, ...] = (
    *KAFKA_OPTIONS,
    Option("uuid", "only records of this domain UUID", metavar="UUID"),
    Option("host", "only records published by this host", metavar="HOST_ID"),
    Option("max_messages", "exit after printing this many records", None, parse_positive_int, metavar="N"),
    Option("idle_timeout", "exit when nothing was printed for this long (heartbeats don't count)", None,
           parse_duration, metavar="DURATION"),
)

DESCRIPTION = """\
Print the records on the domains and hosts topics, decoded. On a terminal each record is one
readable line; otherwise (or with --output json) one JSON object per line, for jq and friends.
Starts at the end of the topics (new records only) unless --from-beginning is given.
"""


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "tail", help="print decoded records as they arrive", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    parser.add_argument("--output", choices=["auto", "json", "text"], default="auto",
                        help="json lines, or readable text (default: text on a terminal, else json)")
    parser.add_argument("--no-xml", action="store_true", help="leave the domain XML out of the output")
    add_options(parser, OPTIONS)
    parser.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    values = resolve(args, OPTIONS)
    kafka = KafkaSettings.from_values(values)
    as_json = args.output == "json" or (args.output == "auto" and not sys.stdout.isatty())
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    client_config = kafka.client_config()
    problems = ProblemWatcher(client_config)
    try:
        consumer = Consumer({**client_config, "logger": librdkafka_logger("tail", max_level=logging.DEBUG),
                             "error_cb": problems, "group.id": "libvirt-kafka-bridge-tail",
                             "enable.auto.commit": False, "enable.partition.eof": False})
    except (KafkaException, ValueError, TypeError) as exc:
        raise UserError(f"invalid Kafka client setting in {KAFKA_CONFIG_PLACES}: "
                        f"{error_text(exc, client_config)}") from None
    try:
        _assign(consumer, [kafka.domains_topic, kafka.hosts_topic], args.from_beginning, problems, client_config)
        decoder = MessageDecoder(kafka.codec(), kafka.domains_topic, kafka.hosts_topic)
        return _loop(consumer, decoder, values, as_json, args.no_xml, stop, sys.stdout, client_config)
    finally:
        consumer.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _assign(consumer: Consumer, topics: list[str], from_beginning: bool, problems: ProblemWatcher,
            client_config: dict[str, str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    attempt = 1.0
    while True:
        try:
            meta = consumer.list_topics(timeout=max(0.1, min(attempt, deadline - time.monotonic())))
            break
        except KafkaException as exc:
            failure = exc
        consumer.poll(0)  # serves the error callbacks: a refused login or an untrusted certificate
        problem = problems.problem
        if problem is not None and (problem.definite or time.monotonic() >= deadline):
            raise UserError(problem.message)
        if time.monotonic() >= deadline:
            raise UserError(f"cannot reach Kafka: {error_text(failure, client_config)}")
        attempt *= 2
    parts: list[TopicPartition] = []
    for topic in topics:
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise UserError(f"topic {topic} does not exist (is an agent running against this cluster?)")
        offset = OFFSET_BEGINNING if from_beginning else OFFSET_END
        parts.extend(TopicPartition(topic, p, offset) for p in tmeta.partitions)
    consumer.assign(parts)


def _loop(consumer: Consumer, decoder: MessageDecoder, values: dict[str, Any],
          as_json: bool, no_xml: bool, stop: threading.Event, out: TextIO, client_config: dict[str, str]) -> int:
    printed = 0
    last_printed = time.monotonic()
    idle = values["idle_timeout"]
    while not stop.is_set():
        if idle is not None and time.monotonic() - last_printed >= idle:
            break
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            print(f"# kafka: {error_text(err, client_config)}", file=sys.stderr)
            continue
        line = _render(msg, decoder, values, as_json, no_xml)
        if line is None:
            continue
        print(line, file=out, flush=True)
        last_printed = time.monotonic()
        printed += 1
        if values["max_messages"] is not None and printed >= values["max_messages"]:
            break
    return 0


def _render(msg: Any, decoder: MessageDecoder, values: dict[str, Any], as_json: bool, no_xml: bool) -> str | None:
    where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
    want_uuid, want_host = values["uuid"], values["host"]
    try:
        payload = decoder.decode(msg.topic(), msg.key(), msg.value(), msg.headers).payload
    except DecodeError as exc:
        obj: dict[str, Any] = {"undecodable": str(exc)}
    else:
        if isinstance(payload, DomainTombstone | HostTombstone):
            key = payload.uuid if isinstance(payload, DomainTombstone) else payload.host
            if (want_uuid and key != want_uuid) or (want_host and key != want_host):
                return None
            obj = {"tombstone": True, "key": key}
        elif isinstance(payload, DomainRecord):
            if (want_uuid and payload.uuid != want_uuid) or (want_host and payload.host != want_host):
                return None
            obj = asdict(payload)
            obj["kind"] = payload.kind.value
            if no_xml:
                obj.pop("xml")
        else:
            # tail reads no heartbeats topic; were one decoded, it would show as its host's record.
            record = payload.record if isinstance(payload, Heartbeat) else payload
            if record is None or want_uuid or (want_host and record.host != want_host):
                return None
            obj = asdict(record)
            obj["status"] = record.status.value
    obj = {**where, **obj}
    return json.dumps(obj, default=str) if as_json else _text_line(obj)


def _text_line(obj: dict[str, Any]) -> str:
    pos = f"{obj['topic']}/{obj['partition']}@{obj['offset']}"
    if "undecodable" in obj:
        return f"{pos}  UNDECODABLE  {obj['undecodable']}"
    if obj.get("tombstone"):
        return f"{pos}  TOMBSTONE  {obj['key']}"
    if "uuid" in obj:
        events = " ".join(_event_label(e) for e in obj["events"]) or "-"
        elided = f" (+{obj['events_elided']} elided)" if obj["events_elided"] else ""
        state = f"{obj['state']}/{obj['reason']}" if obj["state"] else "-"
        return (f"{pos}  {obj['kind']:<7} {obj['name']:<20} {obj['uuid']} v{obj['version']} "
                f"host={obj['host']} {state} events=[{events}]{elided}")
    when = datetime.fromtimestamp(obj["heartbeat_at"] / 1e6, UTC).strftime("%H:%M:%S")
    return (f"{pos}  HOST    {obj['host']} {obj['status']} heartbeat={when} "
            f"inventory={len(obj['domains'])} listed_at={obj['listed_at']}")


def _event_label(e: dict[str, Any]) -> str:
    if e["type"]:
        return f"{e['type']}/{e['detail']}"
    return str(e["id"])
