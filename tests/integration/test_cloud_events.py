"""CloudEvents binary-mode headers, read back with the CloudEvents Python SDK's Kafka binding (issue 7).

The SDK is the outside oracle: it parses the ``ce_*`` headers and ``content-type`` itself, validates the
required attributes and the RFC 3339 time, and hands back the Avro bytes as the event's data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from bridge.records import RecordKind
from bridge.serde import RecordCodec
from devenv import wait_until
from tests.support.domains import unique_name, xml_for_test_driver
from tests.support.topics import Raw, read_all

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _event(raw: Raw) -> CloudEvent:
    message = KafkaMessage(headers=dict(raw.headers), key=raw.key, value=raw.value or b"")
    event = from_binary(message, JSONFormat(), CloudEvent)
    assert isinstance(event, CloudEvent)
    return event


def test_records_and_tombstones_carry_cloud_events_headers(kafka, libvirt_host, topics, agent_factory, test_conn):
    agent = agent_factory(libvirt_host.test_uri, host_id="ce-host/1").start()
    dom = test_conn.defineXML(xml_for_test_driver(unique_name("ce")))
    uuid = dom.UUIDString()
    dom.undefine()

    def domain_log() -> list[Raw]:
        return [r for r in read_all(kafka.bootstrap_servers, topics[0]) if r.key == uuid.encode()]

    wait_until(lambda: bool(domain_log()) and domain_log()[-1].value is None, timeout=30,
               what="the DELETED record and its tombstone", check=agent.check_alive)
    log = domain_log()
    codec = RecordCodec()
    source = "/libvirt-kafka-bridge/hosts/ce-host%2F1"
    record_msgs, tombstone = log[:-1], log[-1]
    for raw in record_msgs:
        record = codec.decode_domain(raw.value, raw.key).record
        event = _event(raw)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == f"{uuid}/{record.version}"
        assert event.get_source() == source
        assert event.get_type() == f"io.libvirt_kafka_bridge.domain.{record.kind.value.lower()}"
        assert event.get_subject() == uuid
        assert event.get_time() == _EPOCH + timedelta(microseconds=record.observed_at)
        assert event.get_datacontenttype() == "application/avro"
        assert event.get_data() == raw.value  # the data is the Avro record itself
    deleted = codec.decode_domain(record_msgs[-1].value, uuid.encode()).record
    assert deleted.kind is RecordKind.DELETED

    event = _event(tombstone)
    assert event.get_type() == "io.libvirt_kafka_bridge.domain.tombstone"
    assert event.get_id() == f"{uuid}/{deleted.version}/tombstone"
    assert event.get_subject() == uuid and event.get_source() == source
    assert event.get_datacontenttype() is None and event.get_data() is None
    assert "content-type" not in dict(tombstone.headers)

    wait_until(lambda: bool(read_all(kafka.bootstrap_servers, topics[1])), timeout=30, what="a HostRecord",
               check=agent.check_alive)
    host_msgs = read_all(kafka.bootstrap_servers, topics[1])
    host = _event(host_msgs[0])
    assert host.get_type() == "io.libvirt_kafka_bridge.host.status"
    assert host.get_subject() == "ce-host/1" and host.get_source() == source
    agent.check_alive()
