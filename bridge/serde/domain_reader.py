"""A reader of DomainRecord's Avro binary encoding, written for the one schema it reads.

Every consumer decodes every DomainRecord it reads, so this is the consumer's hot path. fastavro's
generic reader builds a dict per record (and per event, per map, for the agent) that
:meth:`DomainRecord.from_avro` then turns into the record; this reads the bytes straight into the
record, in about half the time. Its common forms (short strings, no events, an XML under 8 KB) are
read inline, without a call per field. It reads the fields of ``schemas/domain_record.avsc`` in order and
ignores any bytes after them, which is also how a record of a newer schema reads: the evolution rule
only appends fields to the top-level record. fastavro stays the reader of every other form (the
Confluent wire format, host records) and is the oracle the tests hold this one to: whatever this
accepts, fastavro reads the same; what fastavro rejects, this rejects (it is stricter on garbage that
fastavro lets through, e.g. a union index of -1 or a boolean byte of 7).
"""

from __future__ import annotations

import sys

from bridge.errors import DecodeError
from bridge.records import AgentInfo, DomainEvent, DomainRecord, RecordKind
from bridge.serde.agent_table import AgentTable
from bridge.slot_builder import slot_builder

KINDS = (RecordKind.EVENT, RecordKind.RESYNC, RecordKind.DELETED)
"""The schema's RecordKind symbols, in order: a kind's index is its Avro encoding."""
_KIND_BYTES = frozenset(range(0, 2 * len(KINDS), 2))  # each kind's index as a one-byte zig-zag varint
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_CONTINUED = 0x8080808080808080  # the continuation bits of 8 varint bytes, read little-endian
_EIGHT_BYTES = 0x0080808080808080  # set in the first 7 bytes, clear in the 8th
_intern = sys.intern
_new_record = slot_builder(DomainRecord)  # every field given, in the dataclass's order
_new_event = slot_builder(DomainEvent)


class _Malformed(Exception):
    """The bytes are not a DomainRecord (reported as a DecodeError)."""


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag varint at ``pos`` and the position after it."""
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    x = int.from_bytes(buf[pos:pos + 8], "little")
    if x & _CONTINUED == _EIGHT_BYTES and pos + 8 <= len(buf):
        # Versions and timestamps (microseconds since 1970) take exactly 8 bytes: with the
        # continuation bits cleared, their 7-bit groups close up pairwise, 7 -> 14 -> 28 -> 56 bits
        # (ten operations, where one shift per group took twenty-three).
        x ^= _EIGHT_BYTES
        x = x & 0x007F007F007F007F | x >> 1 & 0x3F803F803F803F80
        x = x & 0x00003FFF00003FFF | x >> 2 & 0x0FFFC0000FFFC000
        n = x & 0xFFFFFFF | x >> 4 & 0xFFFFFFF0000000
        return (n >> 1) ^ -(n & 1), pos + 8
    return _long_bytewise(buf, pos)


def _long_bytewise(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if shift > 63:
            raise _Malformed("a long of more than 10 bytes")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    value = (n >> 1) ^ -(n & 1)
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise _Malformed("a long out of range")
    return value, pos


def _str(buf: bytes, pos: int) -> tuple[str, int]:
    b = buf[pos]
    if b < 0x80:  # lengths up to 63 bytes: one byte
        if b & 1:
            raise _Malformed("a negative string length")
        end = pos + 1 + (b >> 1)
        pos += 1
    else:
        n, pos = _long(buf, pos)
        if n < 0:
            raise _Malformed("a negative string length")
        end = pos + n
    if end > len(buf):
        raise _Malformed("a string runs past the end")
    return buf[pos:end].decode(), end


def _index(buf: bytes, pos: int, count: int, what: str) -> tuple[int, int]:
    """A union branch or enum symbol index below ``count``."""
    b = buf[pos]
    if b < 0x80:  # the usual one-byte varint; a longer (non-minimal) one is valid Avro too
        index, pos = (b >> 1) ^ -(b & 1), pos + 1
    else:
        index, pos = _long(buf, pos)
    if not 0 <= index < count:
        raise _Malformed(f"{what} index out of range")
    return index, pos


def _opt_str(buf: bytes, pos: int) -> tuple[str | None, int]:
    """``["null", "string"]``."""
    b = buf[pos]
    if b == 0:
        return None, pos + 1
    if b == 2:
        return _str(buf, pos + 1)
    branch, pos = _index(buf, pos, 2, "a union")
    return (None, pos) if branch == 0 else _str(buf, pos)


def _block_count(buf: bytes, pos: int) -> tuple[int, int]:
    """An array or map block's item count (a negative count is followed by the block's byte size)."""
    count, pos = _long(buf, pos)
    if count < 0:
        count = -count
        _, pos = _long(buf, pos)
    return count, pos


def _events(buf: bytes, pos: int) -> tuple[tuple[DomainEvent, ...], int]:
    """The events array; short strings and an empty data map read inline (see ``_read``)."""
    events: list[DomainEvent] = []
    count, pos = _block_count(buf, pos)
    while count:
        for _ in range(count):
            b = buf[pos]
            if b < 0x80 and not b & 1:
                event_id = buf[pos + 1:(pos := pos + 1 + (b >> 1))].decode()
            else:
                event_id, pos = _str(buf, pos)
            if buf[pos] == 2 and (b := buf[pos + 1]) < 0x80 and not b & 1:
                type_: str | None = _intern(buf[pos + 2:(pos := pos + 2 + (b >> 1))].decode())
            else:
                type_, pos = _opt_str(buf, pos)
                type_ = type_ and _intern(type_)
            if buf[pos] == 2 and (b := buf[pos + 1]) < 0x80 and not b & 1:
                detail: str | None = _intern(buf[pos + 2:(pos := pos + 2 + (b >> 1))].decode())
            else:
                detail, pos = _opt_str(buf, pos)
                detail = detail and _intern(detail)
            data: dict[str, str] = {}
            if buf[pos] == 0:
                pos += 1
            else:
                entries, pos = _block_count(buf, pos)
                while entries:
                    for _ in range(entries):
                        key, pos = _str(buf, pos)
                        data[key], pos = _str(buf, pos)
                    entries, pos = _block_count(buf, pos)
            received_at, pos = _long(buf, pos)
            events.append(_new_event(_intern(event_id), received_at, type_, detail, data))
        if buf[pos] == 0:
            pos += 1
            break
        count, pos = _block_count(buf, pos)
    return tuple(events), pos


class DomainRecordReader:
    """Reads DomainRecords from Avro binary, each record's agent taken from ``agents`` by its bytes."""

    def __init__(self, agents: AgentTable[AgentInfo] | None = None) -> None:
        self._agents: AgentTable[AgentInfo] = agents if agents is not None else AgentTable()

    def read(self, buf: bytes, pos: int = 0) -> DomainRecord:
        """The record whose Avro binary starts at ``pos``; raises DecodeError if the bytes are not one."""
        try:
            return self._read(buf, pos)
        except (_Malformed, IndexError, UnicodeDecodeError) as exc:
            reason = "the bytes end inside the record" if isinstance(exc, IndexError) else str(exc)
            raise DecodeError(f"Avro decode failed: {reason}") from None

    def _read(self, buf: bytes, pos: int) -> DomainRecord:
        # The common forms are read inline, the rest by the helpers above: a call costs about as much
        # as the read it makes, and a record is ~15 of them. Inline, a string whose length is one
        # varint byte (up to 63 bytes: an even byte below 0x80) is sliced without a bounds check, and
        # one final check below catches a slice that ran past the end.
        b = buf[pos]
        if b < 0x80 and not b & 1:
            uuid = buf[pos + 1:(pos := pos + 1 + (b >> 1))].decode()
        else:
            uuid, pos = _str(buf, pos)
        b = buf[pos]
        if b < 0x80 and not b & 1:
            name = buf[pos + 1:(pos := pos + 1 + (b >> 1))].decode()
        else:
            name, pos = _str(buf, pos)
        b = buf[pos]
        if b < 0x80 and not b & 1:
            host = buf[pos + 1:(pos := pos + 1 + (b >> 1))].decode()
        else:
            host, pos = _str(buf, pos)
        version, pos = _long(buf, pos)
        b = buf[pos]
        if b in _KIND_BYTES:
            kind = KINDS[b >> 1]
            pos += 1
        else:
            index, pos = _index(buf, pos, len(KINDS), "an enum")
            kind = KINDS[index]
        if buf[pos] == 0:  # no events: the common RESYNC record
            events: tuple[DomainEvent, ...] = ()
            pos += 1
        else:
            events, pos = _events(buf, pos)
        if buf[pos] == 0:
            elided = 0
            pos += 1
        else:
            elided, pos = _long(buf, pos)
        b = buf[pos]
        if b == 0:
            state = None
            pos += 1
        elif b == 2 and (b := buf[pos + 1]) < 0x80 and not b & 1:
            state = _intern(buf[pos + 2:(pos := pos + 2 + (b >> 1))].decode())
        else:
            state, pos = _opt_str(buf, pos)
            state = state and _intern(state)
        b = buf[pos]
        if b == 0:
            reason = None
            pos += 1
        elif b == 2 and (b := buf[pos + 1]) < 0x80 and not b & 1:
            reason = _intern(buf[pos + 2:(pos := pos + 2 + (b >> 1))].decode())
        else:
            reason, pos = _opt_str(buf, pos)
            reason = reason and _intern(reason)
        if (b := buf[pos]) > 1 or (c := buf[pos + 1]) > 1:
            raise _Malformed("a boolean byte other than 0 or 1")
        active, persistent = b == 1, c == 1
        pos += 2
        # The XML: a length of 64 to 8,191 bytes is two varint bytes.
        if buf[pos] == 2 and (b := buf[pos + 1]) >= 0x80 and (c := buf[pos + 2]) < 0x80 and not b & 1:
            xml: str | None = buf[pos + 3:(pos := pos + 3 + ((b & 0x7F | c << 7) >> 1))].decode()
        else:
            xml, pos = _opt_str(buf, pos)
        observed_at, pos = _long(buf, pos)
        start = pos
        b = buf[pos]  # the agent: three strings, looked up by their bytes, decoded once per agent
        if b < 0x80 and not b & 1 and (c := buf[pos := pos + 1 + (b >> 1)]) < 0x80 and not c & 1 \
                and (b := buf[pos := pos + 1 + (c >> 1)]) < 0x80 and not b & 1:
            pos += 1 + (b >> 1)
        else:
            _, pos = _str(buf, start)
            _, pos = _str(buf, pos)
            _, pos = _str(buf, pos)
        agent = self._agents.get(raw := buf[start:pos]) or self._agent(raw)
        b = buf[pos]
        if b == 0:
            resync_id = None
            pos += 1
        elif b == 2 and (b := buf[pos + 1]) < 0x80 and not b & 1:
            resync_id = _intern(buf[pos + 2:(pos := pos + 2 + (b >> 1))].decode())
        else:
            resync_id, pos = _opt_str(buf, pos)
            resync_id = resync_id and _intern(resync_id)
        if pos > len(buf):  # an inline slice ran past the end, and nothing read after it did
            raise _Malformed("the bytes end inside the record")
        # The few distinct hosts, states, reasons and resync ids are interned: a view of 100,000
        # domains would otherwise hold 100,000 copies of "RUNNING".
        return _new_record(uuid, name, _intern(host), version, kind, agent, observed_at, events,
                           elided, state, reason, active, persistent, xml, resync_id)

    def _agent(self, raw: bytes) -> AgentInfo:
        """A new agent's AgentInfo, from its three strings' bytes."""
        instance_id, pos = _str(raw, 0)
        software, pos = _str(raw, pos)
        libvirt, _ = _str(raw, pos)
        return self._agents.add(raw, AgentInfo(instance_id, software, libvirt))
