"""Avro single-object encoding: ``C3 01``, CRC-64-AVRO fingerprint (little-endian), Avro binary."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from bridge.errors import DecodeError

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a schema's parsing canonical form.

    fastavro's hex string already lists the bytes little-endian first, as Java's
    ``SchemaNormalization.parsingFingerprint("CRC-64-AVRO", s)`` does; it is not a hex number.
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def legacy_fingerprint(schema: dict[str, Any]) -> bytes:
    """The byte-reversed fingerprint that 0.1.0 wrote by mistake; read (and counted) for one release."""
    return schema_fingerprint(schema)[::-1]


class SingleObjectSerializer:
    """Encodes dicts of one schema as single-object messages."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = schema
        self._header = MAGIC + schema_fingerprint(schema)

    def __call__(self, value: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._schema, value)
        return buf.getvalue()


class SingleObjectDeserializer:
    """Decodes single-object messages into dicts of ``reader_schema``.

    Writers are looked up by fingerprint among ``reader_schema`` and ``writer_schemas``. A message from an
    unknown, newer writer is still read when ``tolerate_unknown_writers`` is set: the project's evolution
    rule only appends fields (with defaults) to the top-level record, so the reader's fields are a prefix
    of the writer's and the trailing bytes are the fields it does not know.
    """

    def __init__(
        self,
        reader_schema: dict[str, Any],
        writer_schemas: Iterable[dict[str, Any]] = (),
        tolerate_unknown_writers: bool = True,
    ) -> None:
        self._reader = reader_schema
        self._writers = {schema_fingerprint(reader_schema): reader_schema}
        for w in writer_schemas:
            self._writers[schema_fingerprint(w)] = w
        self._tolerate_unknown = tolerate_unknown_writers

    def __call__(self, data: bytes) -> tuple[dict[str, Any], bool]:
        """Decode ``data``; the flag says the writer schema was unknown (decoded as a prefix)."""
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise DecodeError("not an Avro single-object message (no C3 01 header)")
        writer = self._writers.get(data[2:HEADER_LEN])
        unknown = writer is None
        if writer is None:
            if not self._tolerate_unknown:
                raise DecodeError(f"unknown writer schema fingerprint {data[2:HEADER_LEN].hex()}")
            writer = self._reader
        try:
            # Same schema on both sides (the common case): skip schema resolution.
            reader = None if writer is self._reader else self._reader
            value = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, reader)
        except Exception as exc:  # fastavro raises many types on garbage: all mean "undecodable"
            raise DecodeError(f"Avro decode failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError("Avro payload is not a record")
        return value, unknown
