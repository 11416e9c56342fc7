import io
import json

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import DecodeError
from bridge.records import AgentInfo, DomainEvent, DomainRecord, HostRecord, InventoryEntry, RecordKind
from bridge.serde import RecordCodec
from bridge.serde.confluent_wire import registry_client
from bridge.serde.schema_files import SCHEMA_DIR, parse_plain
from bridge.serde.single_object import MAGIC, schema_fingerprint

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
    decoded = RecordCodec().decode_domain(buf.getvalue())
    assert decoded.unknown_writer
    assert decoded.record == rec


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
