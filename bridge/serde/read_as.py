"""How a message was read: the one vocabulary the wire formats, the decoder and the counters share."""

from __future__ import annotations

import enum


class ReadAs(enum.Enum):
    """How a record's bytes were understood."""

    CURRENT = "current"
    """Written with the schema this reader knows."""
    LEGACY_FINGERPRINT = "legacy_fingerprint"
    """Written by 0.1.0, whose single-object header had the fingerprint bytes reversed."""
    NEWER_SCHEMA = "newer_schema"
    """Written with an unknown, newer schema; read without the fields this version lacks."""
