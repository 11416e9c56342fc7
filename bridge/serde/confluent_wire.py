"""The Confluent Schema Registry wire format: magic ``00``, 4-byte big-endian schema id, Avro binary.

Used when a registry URL is configured. ``confluent_kafka.schema_registry`` (the ``registry`` extra)
talks to the registry; ``mock://`` URLs give an in-process registry for tests.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import fastavro

from bridge.errors import DecodeError, UserError
from bridge.serde.schema_files import parse_plain

MAGIC = b"\x00"
HEADER_LEN = 5


def registry_client(url: str, config: Mapping[str, str] | None = None) -> Any:
    """A SchemaRegistryClient for ``url`` (plus client settings such as basic auth)."""
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: PLC0415
    except ImportError as exc:  # the extra is optional
        raise UserError(
            "a schema registry URL is set but confluent-kafka's schema registry support is not installed "
            "(pip install 'libvirt-kafka-bridge[registry]')"
        ) from exc
    return SchemaRegistryClient.new_client({"url": url, **(config or {})})


class ConfluentSerializer:
    """Registers ``schema`` under ``subject`` on first use and writes the Confluent wire format."""

    def __init__(self, schema: dict[str, Any], raw_schema_json: str, client: Any, subject: str) -> None:
        self._schema = schema
        self._raw = raw_schema_json
        self._client = client
        self._subject = subject
        self._header: bytes | None = None

    def __call__(self, value: Mapping[str, Any]) -> bytes:
        if self._header is None:
            from confluent_kafka.schema_registry import Schema  # noqa: PLC0415

            schema_id = self._client.register_schema(self._subject, Schema(self._raw, schema_type="AVRO"))
            self._header = MAGIC + int(schema_id).to_bytes(4, "big")
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._schema, value)
        return buf.getvalue()


class ConfluentDeserializer:
    """Reads the Confluent wire format, fetching (and caching) writer schemas from the registry."""

    def __init__(self, reader_schema: dict[str, Any], client: Any) -> None:
        self._reader = reader_schema
        self._client = client
        self._writers: dict[int, Any] = {}

    def __call__(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_LEN or data[:1] != MAGIC:
            raise DecodeError("not a Confluent wire-format message (no 00 magic byte)")
        schema_id = int.from_bytes(data[1:HEADER_LEN], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                registered = self._client.get_schema(schema_id)
            except Exception as exc:  # the registry's errors vary by transport
                raise DecodeError(f"schema id {schema_id} not found in the registry: {exc}") from exc
            writer = parse_plain(json.loads(registered.schema_str))
            self._writers[schema_id] = writer
        try:
            value = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, self._reader)
        except Exception as exc:
            raise DecodeError(f"Avro decode failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError("Avro payload is not a record")
        return value
