"""Typed encode/decode of DomainRecord and HostRecord in either wire format."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from bridge.errors import DecodeError
from bridge.records import AgentInfo, DomainRecord, HostRecord
from bridge.serde import confluent_wire, single_object
from bridge.serde.agent_table import AgentTable
from bridge.serde.domain_reader import DomainRecordReader
from bridge.serde.domain_writer import DomainRecordWriter
from bridge.serde.read_as import ReadAs
from bridge.serde.schema_files import SCHEMA_DIR, domain_schema, host_schema

T = TypeVar("T")

_HEADER_LEN = single_object.HEADER_LEN
_CURRENT = ReadAs.CURRENT  # bound once: an Enum member lookup costs ~120 ns on Python 3.11, paid per message
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
"""A domain UUID as keys and records carry it: canonical, lower-case."""


@dataclass(frozen=True)
class Decoded(Generic[T]):
    """A decoded record and how its bytes were read."""

    record: T
    read_as: ReadAs = ReadAs.CURRENT


class _Serializer(Protocol):
    def __call__(self, value: Mapping[str, Any]) -> bytes: ...

    def frame(self, body: bytes) -> bytes: ...


class _TopicCodec:
    """One record type: a serializer for the configured format, a reader of both formats."""

    def __init__(self, name: str, schema: dict[str, Any], registry: Any | None, subject: str) -> None:
        self._soe_read = single_object.SingleObjectDeserializer(schema)
        self.header = self._soe_read.header
        """The single-object header of a message of this schema: what most messages start with."""
        self._write: _Serializer
        self._cf_read: confluent_wire.ConfluentDeserializer | None = None
        if registry is None:
            self._write = single_object.SingleObjectSerializer(schema)
        else:
            raw = (SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8")
            self._write = confluent_wire.ConfluentSerializer(schema, raw, registry, subject)
            self._cf_read = confluent_wire.ConfluentDeserializer(schema, registry)

    def encode(self, value: Mapping[str, Any]) -> bytes:
        return self._write(value)

    def frame(self, body: bytes) -> bytes:
        """The message of an Avro body written by a record's own writer."""
        return self._write.frame(body)

    def decode(self, data: bytes | None) -> tuple[dict[str, Any], ReadAs]:
        if not data:
            raise DecodeError("empty value")
        if self.is_confluent(data):
            if self._cf_read is None:
                raise DecodeError("Confluent wire-format message, but no schema registry is configured")
            return self._cf_read(data), ReadAs.CURRENT
        return self._soe_read(data)

    def is_confluent(self, data: bytes) -> bool:
        return data[:1] == confluent_wire.MAGIC

    def read_single_object(self, data: bytes, body: Callable[[bytes, int], T]) -> tuple[T, ReadAs]:
        """A single-object message whose body ``body`` reads (instead of fastavro's dicts)."""
        return self._soe_read.read(data, body)


class RecordCodec:
    """Encodes and decodes the bridge's records.

    ``registry`` is a SchemaRegistryClient (see :func:`bridge.serde.confluent_wire.registry_client`) or
    None for single-object encoding. Subjects follow the TopicNameStrategy (``<topic>-value``).
    """

    def __init__(
        self,
        registry: Any | None = None,
        domains_topic: str = "libvirt.domains",
        hosts_topic: str = "libvirt.hosts",
        heartbeats_topic: str = "libvirt.hosts.heartbeats",
    ) -> None:
        self._domain = _TopicCodec("domain_record", domain_schema(), registry, f"{domains_topic}-value")
        self._host = _TopicCodec("host_record", host_schema(), registry, f"{hosts_topic}-value")
        # A heartbeat is a HostRecord without its inventory, on its own topic (and registry subject).
        self._beat = _TopicCodec("host_record", host_schema(), registry, f"{heartbeats_topic}-value")
        self._agents: AgentTable[AgentInfo] = AgentTable()
        self._domain_reader = DomainRecordReader(self._agents)
        self._domain_writer = DomainRecordWriter()

    def _agent(self, d: Mapping[str, Any]) -> AgentInfo:
        key = (d["instance_id"], d["software_version"], d["libvirt_version"])
        return self._agents.get(key) or self._agents.add(key, AgentInfo.from_avro(d))

    def encode_domain(self, record: DomainRecord) -> bytes:
        return self._domain.frame(self._domain_writer.write(record))

    def encode_host(self, record: HostRecord) -> bytes:
        return self._host.encode(record.to_avro())

    def encode_heartbeat(self, record: HostRecord) -> bytes:
        """A heartbeat: ``record`` as sent on the heartbeats topic (the caller leaves the inventory out)."""
        return self._beat.encode(record.to_avro())

    def decode_domain(self, data: bytes | None, key: bytes | None = None) -> Decoded[DomainRecord]:
        """Decode and validate a DomainRecord; raises DecodeError for anything else."""
        return Decoded(*self.read_domain(data, key))

    def read_domain(self, data: bytes | None, key: bytes | None = None) -> tuple[DomainRecord, ReadAs]:
        """:meth:`decode_domain` as a pair, for readers that unwrap every message at once."""
        if data is not None and data[:_HEADER_LEN] == self._domain.header:
            # Single-object encoding of this schema, the default and the hot path: read by the schema's
            # own reader, fastavro's dicts skipped, and without the layers that tell the other forms apart.
            record, read_as = self._domain_reader.read(data, _HEADER_LEN), _CURRENT
        elif data and not self._domain.is_confluent(data):
            record, read_as = self._domain.read_single_object(data, self._domain_reader.read)
        else:
            value, read_as = self._domain.decode(data)
            try:
                record = DomainRecord.from_avro(value, self._agent(value["agent"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise DecodeError(f"not a valid DomainRecord: {exc}") from exc
        if not UUID_RE.match(record.uuid):
            raise DecodeError(f"DomainRecord uuid {record.uuid!r} is not a canonical lower-case UUID")
        if key is None or key != record.uuid.encode():  # the usual match needs no call
            _check_key(key, record.uuid, "DomainRecord uuid", read_as)
        if record.version <= 0:
            raise DecodeError(f"DomainRecord version {record.version} is not positive")
        return record, read_as

    def decode_host(self, data: bytes | None, key: bytes | None = None) -> Decoded[HostRecord]:
        """Decode and validate a HostRecord; raises DecodeError for anything else."""
        return _host_record(self._host.decode(data), key)

    def decode_heartbeat(self, data: bytes | None, key: bytes | None = None) -> Decoded[HostRecord]:
        """Decode and validate a heartbeat (a HostRecord; any inventory in it is not one to act on)."""
        return _host_record(self._beat.decode(data), key)


def _host_record(decoded: tuple[dict[str, Any], ReadAs], key: bytes | None) -> Decoded[HostRecord]:
    value, read_as = decoded
    try:
        record = HostRecord.from_avro(value)
    except (KeyError, ValueError, TypeError) as exc:
        raise DecodeError(f"not a valid HostRecord: {exc}") from exc
    _check_key(key, record.host, "HostRecord host", read_as)
    return Decoded(record, read_as)


def _check_key(key: bytes | None, field_value: str, what: str, read_as: ReadAs) -> None:
    """The key must equal the record's own id; for an unknown schema that match is the proof it is ours."""
    if key is None:
        if read_as is ReadAs.NEWER_SCHEMA:
            raise DecodeError("unknown schema fingerprint, and no key to prove the message is a record of ours")
        return
    if key != field_value.encode():
        if read_as is ReadAs.NEWER_SCHEMA:
            raise DecodeError(f"unknown schema fingerprint, and the bytes read as {what} {field_value!r} do not "
                              f"match the key {key!r}: a foreign message")
        raise DecodeError(f"{what} {field_value!r} does not match its key {key!r}")
