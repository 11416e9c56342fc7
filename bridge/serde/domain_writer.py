"""A writer of DomainRecord's Avro binary encoding, written for the one schema it writes.

The agent encodes every record it publishes, on its ``pipeline`` thread. fastavro's generic writer
takes the dict :meth:`DomainRecord.to_avro` builds and walks the parsed schema for each field: about
18 us a record. This writes the fields of ``schemas/domain_record.avsc`` in order straight from the
record, in less than half of that. It is the mirror of :mod:`bridge.serde.domain_reader`; fastavro is
the oracle its tests hold it to (the same bytes for every record), and Apache Avro's Java library
reads what the agent writes in the integration tests.
"""

from __future__ import annotations

from bridge.records import AgentInfo, DomainEvent, DomainRecord
from bridge.serde.agent_table import AgentTable
from bridge.serde.domain_reader import KINDS

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_KIND_INDEX = {kind: bytes((i << 1,)) for i, kind in enumerate(KINDS)}  # the symbol's index, zig-zag
# Zig-zag values of 49 to 56 bits take exactly 8 varint bytes: versions and timestamps in
# microseconds since 1970 (2^50 is the year 2005, 2^55 the year 3111).
_EIGHT_LOW, _EIGHT_HIGH = 1 << 49, 1 << 56
_SMALL = [bytes((n,)) for n in range(0x80)]
_NULL = b"\x00"  # also: false, an empty array or map, the end of one
_TRUE = b"\x01"


def _long(n: int) -> bytes:
    """The zig-zag varint of ``n``."""
    z = (n << 1) ^ (n >> 63)  # outside the window below for any n that does not fit a long
    if _EIGHT_LOW <= z < _EIGHT_HIGH:
        # The reader's trick in reverse, on two 28-bit halves (small ints are cheaper to shift): the
        # 7-bit groups are spread at once rather than byte by byte.
        lo, hi = z & 0xFFFFFFF, z >> 28
        return ((lo & 0x7F | lo << 1 & 0x7F00 | lo << 2 & 0x7F0000 | lo << 3 & 0x7F000000 | 0x80808080)
                .to_bytes(4, "little")
                + (hi & 0x7F | hi << 1 & 0x7F00 | hi << 2 & 0x7F0000 | hi << 3 & 0x7F000000 | 0x808080)
                .to_bytes(4, "little"))
    if z < 0x80:  # z >= 0 for every n
        return _SMALL[z]
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise ValueError(f"{n} does not fit an Avro long")
    out = bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _str(s: str) -> bytes:
    data = s.encode()
    n = len(data)
    return (_SMALL[n << 1] if n < 0x40 else _long(n)) + data


def _opt_str(s: str | None) -> bytes:
    """``["null", "string"]``."""
    return _NULL if s is None else b"\x02" + _str(s)


def _events(events: tuple[DomainEvent, ...]) -> bytes:
    if not events:
        return _NULL
    parts = [_long(len(events))]
    for e in events:
        parts.append(_str(e.id) + _opt_str(e.type) + _opt_str(e.detail))
        if e.data:
            parts.append(_long(len(e.data)))
            for key, value in e.data.items():
                parts.append(_str(key) + _str(value))
        parts.append(_NULL + _long(e.received_at))  # the map's end (or the empty map), then the time
    parts.append(_NULL)
    return b"".join(parts)


class DomainRecordWriter:
    """Writes DomainRecords as Avro binary; each agent's bytes are encoded once and kept."""

    def __init__(self, agents: AgentTable[bytes] | None = None) -> None:
        self._agents: AgentTable[bytes] = agents if agents is not None else AgentTable()

    def write(self, record: DomainRecord) -> bytes:
        """The Avro binary of ``record`` (no single-object or registry header); ValueError if a field
        does not fit the schema."""
        try:
            return self._write(record)
        except (AttributeError, TypeError, KeyError) as exc:  # a field of the wrong type
            raise ValueError(f"not a DomainRecord the schema can hold ({record.uuid!r}): {exc}") from None

    def _write(self, record: DomainRecord) -> bytes:
        agent = self._agents.get(record.agent) or self._agent(record.agent)
        return b"".join((
            _str(record.uuid), _str(record.name), _str(record.host), _long(record.version),
            _KIND_INDEX[record.kind], _events(record.events), _long(record.events_elided),
            _opt_str(record.state), _opt_str(record.reason),
            _TRUE if record.active else _NULL, _TRUE if record.persistent else _NULL,
            _opt_str(record.xml), _long(record.observed_at), agent, _opt_str(record.resync_id),
        ))

    def _agent(self, agent: AgentInfo) -> bytes:
        raw = _str(agent.instance_id) + _str(agent.software_version) + _str(agent.libvirt_version)
        return self._agents.add(agent, raw)
