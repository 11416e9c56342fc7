"""The hand-written DomainRecord writer against fastavro's generic writer, the other implementation.

For every record both write the same bytes. (The Java oracle tests read what the agent writes with
Apache Avro's own library.)
"""

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given

from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind
from bridge.serde import RecordCodec
from bridge.serde.agent_table import AgentTable
from bridge.serde.domain_writer import DomainRecordWriter
from bridge.serde.single_object import HEADER_LEN
from tests.unit.test_domain_reader import body, records

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


def record(version: int = 1, *, agent: AgentInfo | None = None, **fields: Any) -> DomainRecord:
    base = DomainRecord("u", "n", "h", version, RecordKind.EVENT, agent or AgentInfo("a", "b", "c"), 2,
                        state="RUNNING", xml="<domain/>")
    return replace(base, **fields)


@given(records)
def test_writes_every_record_as_fastavro_writes_it(rec):
    assert DomainRecordWriter().write(rec) == body(rec)


# Every varint length's first and last value, negative and positive, and the 8-byte window's edges
# (zig-zag 2^49 and 2^56 - 1, where versions and timestamps in microseconds fall).
EDGES = sorted({sign * (1 << bits) + delta for bits in range(0, 64) for sign in (1, -1) for delta in (-1, 0, 1)
                if LONG_MIN <= sign * (1 << bits) + delta <= LONG_MAX} | {LONG_MIN, LONG_MAX, 0})


def test_longs_at_every_varint_length_edge_are_written_as_fastavro_writes_them():
    writer = DomainRecordWriter()
    for n in EDGES:
        rec = record(n, observed_at=n, events_elided=n,
                     events=(DomainEvent("LIFECYCLE", n, "STARTED", "BOOTED", {"k" * 70: "v" * 200}),))
        assert writer.write(rec) == body(rec), n


def test_one_writer_writes_each_records_own_agent_also_past_its_cache_of_agents():
    writer = DomainRecordWriter(AgentTable(limit=10))
    agents = [AgentInfo(f"instance-{i}", "1.0", "9.0.0") for i in range(25)]
    for agent in (*agents, agents[0], agents[-1], agents[3]):
        rec = record(agent=agent)
        assert writer.write(rec) == body(rec)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"version": 2**63}, "does not fit an Avro long"),
    ({"observed_at": LONG_MIN - 1}, "does not fit an Avro long"),
    ({"name": None}, "'u'"),
    ({"kind": "SOMETHING"}, "'u'"),
])
def test_a_field_the_schema_cannot_hold_is_a_value_error_that_names_the_record(fields, reason):
    with pytest.raises(ValueError, match=reason):
        DomainRecordWriter().write(record(**fields))


def test_the_codec_frames_the_writers_bytes_as_a_single_object_message():
    rec = record(1_764_590_000_123_456, uuid="1b4e28ba-2fa1-41d2-883f-0016d3cca427")
    data = RecordCodec().encode_domain(rec)
    assert data[:2] == b"\xc3\x01" and data[HEADER_LEN:] == body(rec)
    assert RecordCodec().decode_domain(data).record == rec
