"""The hand-written DomainRecord reader against fastavro's generic reader, the other implementation.

Whatever bytes the reader accepts, fastavro reads as the same record; whatever fastavro rejects, the
reader rejects too. (The Java oracle tests read Apache Avro's own bytes through the same reader.)
"""

import io

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import DecodeError
from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind
from bridge.serde.domain_reader import DomainRecordReader
from bridge.serde.schema_files import domain_schema

SCHEMA = fastavro.parse_schema(domain_schema())
LONGS = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=5) | st.text(min_size=60, max_size=300)  # one-byte and multi-byte lengths



def domain_records(text: st.SearchStrategy[str], xml: st.SearchStrategy[str]) -> st.SearchStrategy[DomainRecord]:
    return st.builds(
        DomainRecord,
        uuid=st.text(max_size=40),
        name=text,
        host=text,
        version=LONGS,
        kind=st.sampled_from(RecordKind),
        agent=st.builds(AgentInfo, text, text, text),
        observed_at=LONGS,
        events=st.lists(
            st.builds(DomainEvent, id=text, received_at=LONGS, type=st.none() | text, detail=st.none() | text,
                      data=st.dictionaries(text, text, max_size=3)),
            max_size=3,
        ).map(tuple),
        events_elided=LONGS,
        state=st.none() | text,
        reason=st.none() | text,
        active=st.booleans(),
        persistent=st.booleans(),
        xml=st.none() | xml,
        resync_id=st.none() | text,
    )


records = domain_records(TEXT, st.text(max_size=3000))
short_records = domain_records(st.text(max_size=3), st.text(max_size=3))  # garbling hits structure, not text


def body(record: DomainRecord) -> bytes:
    """The record's Avro binary as fastavro writes it (the agent has a writer of its own)."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SCHEMA, record.to_avro())
    return out.getvalue()


def fastavro_read(data: bytes) -> DomainRecord:
    value = fastavro.schemaless_reader(io.BytesIO(data), SCHEMA, None)
    assert isinstance(value, dict)
    return DomainRecord.from_avro(value)


@given(records)
def test_reads_every_record_fastavro_writes_as_fastavro_reads_it(record):
    data = body(record)
    assert DomainRecordReader().read(data) == fastavro_read(data) == record


# Bytes that mean something in Avro binary: small varints, union branches, booleans, continuation bits.
TELLING_BYTES = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 0x7F, 0x80, 0x81, 0xFE, 0xFF]) | st.integers(0, 255)


@settings(max_examples=1500)
@given(short_records, st.data())
def test_garbled_bytes_are_rejected_or_read_exactly_as_fastavro_reads_them(record, data):
    raw = bytearray(body(record))
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), TELLING_BYTES), min_size=1, max_size=2))
    for pos, byte in edits:
        raw[pos] = byte
    truncate = data.draw(st.booleans())
    garbled = bytes(raw[:data.draw(st.integers(0, len(raw)))] if truncate else raw)
    try:
        expected = fastavro_read(garbled)
    except Exception:  # any failure of fastavro's: the reader must reject the bytes as well
        with pytest.raises(DecodeError):
            DomainRecordReader().read(garbled)
        return
    try:
        got = DomainRecordReader().read(garbled)
    except DecodeError:
        return  # stricter than fastavro: a negative union index, a boolean byte of 7, ...
    assert got == expected


def test_blocks_with_negative_counts_and_byte_sizes_read_as_fastavro_reads_them():
    # Writers may split arrays and maps into blocks whose count is negative and followed by the block's
    # size in bytes (the Avro spec's blocking); fastavro and the Java encoder write plain counts.
    event = DomainEvent("LIFECYCLE", 5, "STARTED", "BOOTED", {"k": "v"})
    record = DomainRecord("u", "n", "h", 1, RecordKind.EVENT, AgentInfo("a", "b", "c"), 2, events=(event,))
    data = body(record)
    events_at = data.index(b"\x02\x12LIFECYCLE")  # one item, then the id (length 9)
    items = data[events_at + 1:]
    map_at = items.index(b"\x02\x02k\x02v")
    items = items[:map_at] + b"\x01\x08" + items[map_at + 1:]  # the map as a block of -1 item, 4 bytes
    blocked = data[:events_at] + b"\x01\x40" + items  # the array as a block of -1 item, 32 bytes
    assert fastavro_read(blocked) == record
    assert DomainRecordReader().read(blocked) == record


@pytest.mark.parametrize(("garbage", "reason"), [
    (b"", "end inside"),
    (b"\x03", "negative string length"),
    (b"\x48" + b"a" * 10, "end inside"),  # a string that runs past the end
    # uuid, name, host; version, kind, no events, elided; no state, reason; two booleans; no XML;
    # observed_at; the agent's three strings; then a resync id of 4 bytes with 2 left: the last field.
    (b"\x02a\x02b\x02c" + b"\x00" * 4 + b"\x00\x00" + b"\x00\x00" + b"\x00\x00" + b"\x02a\x02b\x02c"
     + b"\x02\x08ab", "end inside"),
    (b"\x02\xff", "invalid start byte"),
    (b"\x00\x00\x00" + b"\xff" * 11, "more than 10 bytes"),
])
def test_what_is_not_a_record_is_a_decode_error_that_says_why(garbage, reason):
    with pytest.raises(DecodeError, match=reason):
        DomainRecordReader().read(garbage)


def test_records_of_one_agent_share_one_agent_info():
    reader = DomainRecordReader()
    agent = AgentInfo("instance", "1.0", "9.0.0")
    one, two = (reader.read(body(DomainRecord(f"u{i}", "n", "h", i, RecordKind.RESYNC, agent, i))) for i in (1, 2))
    assert one.agent == agent and one.agent is two.agent


def test_union_and_enum_indexes_in_longer_than_needed_varints_read_as_fastavro_reads_them():
    # Avro does not require the shortest varint; 0x82 0x00 is index 1 as much as 0x02 is.
    record = DomainRecord("u", "n", "h", 1, RecordKind.RESYNC, AgentInfo("a", "b", "c"), 2, state="RUNNING")
    data = body(record)
    kind_at = len(b"\x02u\x02n\x02h\x02")  # three one-letter strings and version 1
    assert data[kind_at] == 0x02  # RESYNC
    state_at = data.index(b"\x02\x0eRUNNING")
    stretched = data[:kind_at] + b"\x82\x00" + data[kind_at + 1:state_at] + b"\x82\x00" + data[state_at + 1:]
    assert fastavro_read(stretched) == record
    assert DomainRecordReader().read(stretched) == record


def _stretched_long(n: int) -> bytes:
    """``n`` as a zig-zag varint one byte longer than needed (a continuation byte, then 0x00), but
    never over the 10 bytes Apache Avro's Java reader allows a long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        out.append(z & 0x7F | 0x80)
        z >>= 7
        if not z:
            return bytes(out) + b"\x00" if len(out) < 10 else bytes(out[:-1]) + bytes([out[-1] & 0x7F])


def _stretched_body(r: DomainRecord) -> bytes:
    """``r``'s Avro binary with every length, count, index and long one byte longer than needed."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return _stretched_long(len(raw)) + raw

    def opt(text: str | None) -> bytes:
        return _stretched_long(0) if text is None else _stretched_long(1) + s(text)

    out = s(r.uuid) + s(r.name) + s(r.host) + _stretched_long(r.version)
    out += _stretched_long(list(RecordKind).index(r.kind))
    if r.events:
        out += _stretched_long(len(r.events))
        for e in r.events:
            out += s(e.id) + opt(e.type) + opt(e.detail)
            if e.data:
                out += _stretched_long(len(e.data)) + b"".join(s(k) + s(v) for k, v in e.data.items())
            out += _stretched_long(0) + _stretched_long(e.received_at)
    out += _stretched_long(0) + _stretched_long(r.events_elided) + opt(r.state) + opt(r.reason)
    out += bytes([r.active, r.persistent]) + opt(r.xml) + _stretched_long(r.observed_at)
    out += s(r.agent.instance_id) + s(r.agent.software_version) + s(r.agent.libvirt_version) + opt(r.resync_id)
    return out


@settings(max_examples=200, deadline=None)
@given(records)
def test_every_varint_longer_than_needed_reads_as_fastavro_reads_it(record):
    # The reader's inline forms take the shortest varints; every other form must read the same.
    data = _stretched_body(record)
    assert fastavro_read(data) == record
    assert DomainRecordReader().read(data) == record
