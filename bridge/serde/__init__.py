"""Avro wire formats for the bridge's records.

``schemas/*.avsc`` are the single source of truth. Two wire formats:

- single-object encoding (default): ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + Avro binary, so every
  message names its schema without a registry;
- the Confluent format (magic ``00`` + 4-byte schema id) when a Schema Registry URL is configured.

Readers accept both, whatever the writer chose, through one path: :class:`MessageDecoder`.
"""

from bridge.serde.message_decoder import Decoded, DomainTombstone, Heartbeat, HostTombstone, MessageDecoder, Payload
from bridge.serde.read_as import ReadAs
from bridge.serde.record_codec import RecordCodec
from bridge.serde.schema_files import domain_schema, host_schema, load_schema

__all__ = [
    "Decoded", "DomainTombstone", "Heartbeat", "HostTombstone", "MessageDecoder", "Payload", "ReadAs", "RecordCodec",
    "domain_schema", "host_schema", "load_schema",
]
