"""A consumer in any language needs only schemas/*.avsc (must-show 6).

This module deliberately imports nothing from ``bridge``: it reads the agent's messages with
confluent_kafka and decodes them with fastavro and the .avsc files alone.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _schema(name):
    return fastavro.parse_schema(json.loads((SCHEMAS / f"{name}.avsc").read_text()))


def _messages(bootstrap, topic, want, timeout=60):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"schema-only-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list = []
        deadline = time.monotonic() + timeout
        while not want(out) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error() and m.value() is not None:
                out.append(m)
        return out
    finally:
        c.close()


def _decode(schema, data):
    # fastavro's hex string already lists the fingerprint's bytes little-endian first, as the spec
    # writes them; Apache Avro's Java library is the outside oracle (test_golden_vectors, test_java_oracle).
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    assert data[:2] == b"\xc3\x01", "Avro single-object marker"
    assert data[2:10] == fp, "the message names its schema by fingerprint"
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)


def test_records_decode_with_the_avsc_files_alone(kafka, libvirt_host, topics, agent_factory, test_conn):
    agent_factory(libvirt_host.test_uri).start()
    name = f"schema-only-{time.time_ns()}"
    dom = test_conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os></domain>")
    dom.create()
    domain_schema, host_schema = _schema("domain_record"), _schema("host_record")

    msgs = _messages(kafka.bootstrap_servers, topics[0],
                     lambda out: any(_decode(domain_schema, m.value())["name"] == name for m in out))
    mine = [_decode(domain_schema, m.value()) for m in msgs if _decode(domain_schema, m.value())["name"] == name]
    assert mine, "the agent's record for the new domain"
    rec = mine[-1]
    assert rec["uuid"] == dom.UUIDString() and rec["kind"] in ("EVENT", "RESYNC") and rec["version"] > 0
    assert rec["events"][0]["id"] == "LIFECYCLE" and rec["events"][0]["type"] == "DEFINED"
    hosts = _messages(kafka.bootstrap_servers, topics[1], lambda out: len(out) >= 1)
    h = _decode(host_schema, hosts[0].value())
    assert h["host"] == "host1" and h["status"] == "UP"
    dom.destroy()
    dom.undefine()
