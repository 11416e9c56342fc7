"""Avro single-object encoding: ``C3 01``, CRC-64-AVRO fingerprint (little-endian), Avro binary."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from bridge.errors import DecodeError
from bridge.serde.read_as import ReadAs

T = TypeVar("T")

MAGIC = b"\xc3\x01"
_NEWER = ReadAs.NEWER_SCHEMA  # bound once: an Enum member lookup costs ~120 ns on Python 3.11, paid per message
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

    def frame(self, body: bytes) -> bytes:
        """A message of ``body``, the Avro binary of one value of the schema (written elsewhere)."""
        return self._header + body


class SingleObjectDeserializer:
    """Decodes single-object messages into dicts of ``reader_schema``; says how each was read.

    - The reader's own fingerprint: decoded as is (:attr:`ReadAs.CURRENT`).
    - The byte-reversed fingerprint 0.1.0 wrote (:func:`legacy_fingerprint`): same bytes after the
      header, so decoded the same way and flagged :attr:`ReadAs.LEGACY_FINGERPRINT`.
    - Any other fingerprint: read as a newer version of the same record (:attr:`ReadAs.NEWER_SCHEMA`).
      The project's evolution rule only appends fields, with defaults, to the top-level record, so the
      reader's fields are a prefix of the writer's. This is only a candidate: the caller must prove it
      is one of ours (see :class:`bridge.serde.RecordCodec`), or it is a foreign message.
    """

    def __init__(self, reader_schema: dict[str, Any]) -> None:
        self._reader = reader_schema
        current = schema_fingerprint(reader_schema)
        self.header = MAGIC + current
        """What a message of the reader's own schema starts with (read as :attr:`ReadAs.CURRENT`)."""
        self._known = {current: ReadAs.CURRENT, legacy_fingerprint(reader_schema): ReadAs.LEGACY_FINGERPRINT}

    def read_as(self, data: bytes) -> ReadAs:
        """How ``data``'s Avro body (from :data:`HEADER_LEN` on) reads, by its header's fingerprint."""
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise DecodeError("not an Avro single-object message (no C3 01 header)")
        return self._known.get(data[2:HEADER_LEN], _NEWER)

    def __call__(self, data: bytes) -> tuple[dict[str, Any], ReadAs]:
        return self.read(data, self._fastavro_body)

    def read(self, data: bytes, body: Callable[[bytes, int], T]) -> tuple[T, ReadAs]:
        """``body(data, HEADER_LEN)`` (a reader of the Avro body that raises DecodeError) and how it read."""
        read_as = self.read_as(data)
        try:
            return body(data, HEADER_LEN), read_as
        except DecodeError as exc:
            if read_as is not ReadAs.NEWER_SCHEMA:
                raise
            raise DecodeError(f"unknown schema fingerprint {data[2:HEADER_LEN].hex()}, and {exc}") from exc

    def _fastavro_body(self, data: bytes, pos: int) -> dict[str, Any]:
        try:
            value = fastavro.schemaless_reader(io.BytesIO(data[pos:]), self._reader, None)
        except Exception as exc:  # fastavro raises many types on garbage: all mean "undecodable"
            raise DecodeError(f"Avro decode failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError("Avro payload is not a record")
        return value
