import io
import json

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import DecodeError
from bridge.records import AgentInfo, DomainEvent, DomainRecord, HostRecord, InventoryEntry, RecordKind
from bridge.serde import DomainTombstone, Heartbeat, HostTombstone, MessageDecoder, ReadAs, RecordCodec, cloud_events
from bridge.serde.confluent_wire import registry_client
from bridge.serde.schema_files import SCHEMA_DIR, domain_schema, host_schema, parse_plain
from bridge.serde.single_object import MAGIC, legacy_fingerprint, schema_fingerprint

AGENT = AgentInfo("abc", "0.1.0", "9.0.0")
UUID = "8ff7047b-fb46-44ff-a4c6-7c20c73ab86e"

records = st.builds(
    DomainRecord,
    uuid=st.just(UUID),
    name=st.text(max_size=30),
    host=st.text(min_size=1, max_size=10),
    version=st.integers(1, 2**62),
    kind=st.sampled_from(RecordKind),
    agent=st.just(AGENT),
    observed_at=st.integers(0, 2**62),
    events=st.lists(
        st.builds(DomainEvent, id=st.sampled_from(["LIFECYCLE", "REBOOT"]), received_at=st.integers(0, 2**62),
                  type=st.none() | st.text(max_size=5), detail=st.none() | st.text(max_size=5),
                  data=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
        max_size=4,
    ).map(tuple),
    events_elided=st.integers(0, 100),
    state=st.none() | st.sampled_from(["RUNNING", "PAUSED"]),
    reason=st.none() | st.text(max_size=8),
    active=st.booleans(),
    persistent=st.booleans(),
    xml=st.none() | st.text(max_size=100),
    resync_id=st.none() | st.text(max_size=8),
)


@given(records)
def test_domain_record_round_trip(record):
    codec = RecordCodec()
    data = codec.encode_domain(record)
    assert data[:2] == MAGIC
    assert codec.decode_domain(data, record.uuid.encode()).record == record


def test_host_record_round_trip():
    codec = RecordCodec()
    h = HostRecord("h1", AGENT, 5, listed_at=3, domains=(InventoryEntry(UUID, 4),), heartbeat_interval_ms=1000)
    assert codec.decode_host(codec.encode_host(h), b"h1").record == h


@pytest.mark.parametrize("data", [b"", b"\xc3", b"\xc3\x01" + b"\x00" * 8, b"hello world", b"\x00\x00\x00\x00\x01x"])
def test_garbage_is_a_decode_error(data):
    with pytest.raises(DecodeError):
        RecordCodec().decode_domain(data)


def test_key_and_uuid_must_agree():
    codec = RecordCodec()
    rec = DomainRecord(UUID, "n", "h", 1, RecordKind.EVENT, AGENT, 1)
    with pytest.raises(DecodeError, match="does not match its key"):
        codec.decode_domain(codec.encode_domain(rec), b"other")


def test_newer_writer_with_an_appended_field_is_read_as_a_prefix():
    raw = json.loads((SCHEMA_DIR / "domain_record.avsc").read_text())
    raw["fields"].append({"name": "future_field", "type": "string", "default": ""})
    newer = parse_plain(raw)
    rec = DomainRecord(UUID, "n", "h", 7, RecordKind.EVENT, AGENT, 1, state="RUNNING")
    buf = io.BytesIO()
    buf.write(MAGIC + schema_fingerprint(newer))
    fastavro.schemaless_writer(buf, newer, {**rec.to_avro(), "future_field": "x" * 50})
    decoded = RecordCodec().decode_domain(buf.getvalue(), UUID.encode())
    assert decoded.read_as is ReadAs.NEWER_SCHEMA
    assert decoded.record == rec
    with pytest.raises(DecodeError, match="no key to prove"):
        RecordCodec().decode_domain(buf.getvalue())


def test_the_fingerprint_is_written_in_the_byte_order_fastavro_prints():
    # fastavro's hex string lists the bytes little-endian first (as Java's parsingFingerprint does);
    # the Java golden vectors in tests/integration/test_golden_vectors.py are the outside oracle.
    pcf = to_parsing_canonical_form(domain_schema())
    assert schema_fingerprint(domain_schema()) == bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))
    assert RecordCodec().encode_domain(DomainRecord(UUID, "n", "h", 1, RecordKind.EVENT, AGENT, 1))[2:10] == \
        schema_fingerprint(domain_schema())


def test_a_record_written_by_0_1_0_is_read_and_flagged_legacy():
    rec = DomainRecord(UUID, "n", "h", 3, RecordKind.EVENT, AGENT, 1, state="RUNNING")
    current = RecordCodec().encode_domain(rec)
    # 0.1.0 wrote the same Avro body behind the byte-reversed fingerprint.
    legacy = MAGIC + legacy_fingerprint(domain_schema()) + current[10:]
    assert legacy_fingerprint(domain_schema()) == schema_fingerprint(domain_schema())[::-1]
    decoded = RecordCodec().decode_domain(legacy, UUID.encode())
    assert (decoded.record, decoded.read_as) == (rec, ReadAs.LEGACY_FINGERPRINT)
    host = HostRecord("h1", AGENT, 5)
    legacy_host = MAGIC + legacy_fingerprint(host_schema()) + RecordCodec().encode_host(host)[10:]
    assert RecordCodec().decode_host(legacy_host, b"h1").read_as is ReadAs.LEGACY_FINGERPRINT


def test_a_foreign_single_object_message_is_undecodable_even_when_its_bytes_parse():
    # Another producer's schema: a record of two strings. Its bytes happen to parse as the first fields
    # of a DomainRecord often enough that only the key check can tell them apart.
    foreign = parse_plain({"type": "record", "name": "Other", "namespace": "x", "fields": [
        {"name": "a", "type": "string"}, {"name": "b", "type": "string"}]})
    buf = io.BytesIO()
    buf.write(MAGIC + schema_fingerprint(foreign))
    fastavro.schemaless_writer(buf, foreign, {"a": UUID, "b": "y"})
    decoder = MessageDecoder(RecordCodec(), "d", "h")
    with pytest.raises(DecodeError):
        decoder.decode("d", UUID.encode(), buf.getvalue())
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        decoder.decode("d", b"some-key", buf.getvalue())


def test_the_decoder_covers_tombstones_foreign_cloud_events_and_unknown_topics():
    codec = RecordCodec()
    decoder = MessageDecoder(codec, "d", "h")
    assert decoder.decode("d", UUID.encode(), None).payload == DomainTombstone(UUID)
    assert decoder.decode("h", b"host-1", None).payload == HostTombstone("host-1")
    with pytest.raises(DecodeError, match="canonical"):
        decoder.decode("d", b"NOT-A-UUID", None)
    rec = DomainRecord(UUID, "n", "h", 3, RecordKind.EVENT, AGENT, 1)
    data = codec.encode_domain(rec)
    ours = list(cloud_events.domain_headers(rec))
    assert decoder.decode("d", UUID.encode(), data, ours).payload == rec
    # The bytes decide: a foreign CloudEvent's type is named only when its bytes are not ours, and the
    # headers are not even read for a message that decodes (reading them costs more than decoding).
    foreign = [("ce_type", b"com.example.other")]
    with pytest.raises(DecodeError, match=r"foreign type 'com.example.other': .*single-object"):
        decoder.decode("d", UUID.encode(), b'{"data": 1}', foreign)
    with pytest.raises(DecodeError, match=r"foreign type 'com.example.other': .*single-object"):
        decoder.decode("d", UUID.encode(), b'{"data": 1}', lambda: foreign)
    assert decoder.decode("d", UUID.encode(), data, {"ce_type": "io.libvirt_kafka_bridge.domain.new"}).payload == rec
    with pytest.raises(DecodeError) as ours_but_not_avro:
        decoder.decode("d", UUID.encode(), b"garbage", ours)
    assert "foreign type" not in str(ours_but_not_avro.value)

    def unread() -> list[tuple[str, bytes]]:
        raise AssertionError("headers read for a message whose bytes are ours")
    assert decoder.decode("d", UUID.encode(), data, unread).payload == rec
    with pytest.raises(DecodeError, match="not one of d, h"):
        decoder.decode("elsewhere", UUID.encode(), data)


def test_heartbeats_topic_messages_decode_as_heartbeats_never_as_inventories():
    codec = RecordCodec(hosts_topic="h", heartbeats_topic="b")
    decoder = MessageDecoder(codec, "d", "h", "b")
    beat = HostRecord(host="hv1", agent=AGENT, heartbeat_at=5, resync_id="r1", heartbeat_interval_ms=1000)
    assert decoder.decode("b", b"hv1", codec.encode_heartbeat(beat)).payload == Heartbeat("hv1", beat)
    assert decoder.decode("b", b"hv1", None).payload == Heartbeat("hv1", None)
    assert decoder.decode("h", b"hv1", codec.encode_host(beat)).payload == beat
    with pytest.raises(DecodeError, match="does not match its key"):
        decoder.decode("b", b"hv2", codec.encode_heartbeat(beat))
    with pytest.raises(DecodeError, match=r"not one of d, h$"):
        MessageDecoder(codec, "d", "h").decode("b", b"hv1", codec.encode_heartbeat(beat))


def test_confluent_wire_format_with_a_registry_and_readers_accept_both_formats():
    registry = registry_client("mock://codec-test")
    with_registry = RecordCodec(registry)
    rec = DomainRecord(UUID, "n", "h", 9, RecordKind.RESYNC, AGENT, 1, state="SHUTOFF")
    data = with_registry.encode_domain(rec)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") >= 1
    assert with_registry.decode_domain(data).record == rec
    assert with_registry.decode_domain(RecordCodec().encode_domain(rec)).record == rec
    with pytest.raises(DecodeError, match="no schema registry"):
        RecordCodec().decode_domain(data)
