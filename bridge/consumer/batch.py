"""What the reflector hands its sink (the view): poll batches of decoded messages, and how it fails."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bridge.consumer.position import Offset, Position
from bridge.errors import BridgeError
from bridge.serde import Payload


class ConsumerError(BridgeError):
    """The reader cannot go on (a fatal Kafka client error)."""


class KafkaAccessError(ConsumerError):
    """Kafka refused the reader's security settings before it ever read (credentials refused, broker
    certificate not trusted): the message names the setting to fix, secrets masked. Retrying the same
    settings cannot help, so the reader stops instead of retrying."""


@dataclass(frozen=True, slots=True)
class PollBatch:
    """What one poll produced: the decoded messages (``payloads[i]`` read at ``sources[i]``), the
    position after them, and whether every partition has now been read up to the high watermark seen
    at start (stays True once reached)."""

    # Two parallel tuples, not one of pairs: a pair per message was a fifth of the objects the
    # reader made per record, and every one of them counts towards the cyclic collector's next pass.
    payloads: tuple[Payload, ...]
    sources: tuple[Offset, ...]
    position: Position
    synced: bool


Sink = Callable[[PollBatch], None]
"""Receives poll batches, in order, on the reflector's thread."""


@dataclass(frozen=True, slots=True)
class ReflectorCounters:
    """Messages the reflector skipped or read leniently."""

    undecodable: int = 0
    """Skipped: not a record of this bridge (foreign or corrupt bytes, bad key)."""
    unknown_schema: int = 0
    """Decoded from a writer schema this reader does not know (a newer one), fields it lacks ignored."""
    legacy_fingerprint: int = 0
    """Written by 0.1.0 (fingerprint bytes reversed in the single-object header), read all the same."""
