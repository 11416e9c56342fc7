"""The recent changes, so a watch can resume from a position a snapshot returned.

Kubernetes' watch cache in miniature: a bounded ring of changes, each tagged with the message that
caused it. A position older than the ring is *expired* (HTTP 410 Gone in Kubernetes): the reader must
list again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from bridge.consumer.changes import Change
from bridge.consumer.position import Position, TopicPartition
from bridge.errors import BridgeError


class PositionExpired(BridgeError):
    """Changes after this position are no longer retained: take a new snapshot (``list()``)."""


class ChangeHistory:
    """The last ``capacity`` changes, in the order they happened."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._changes: deque[Change] = deque()
        self._capacity = capacity
        # Per partition, one past the newest offset of a change that fell out of the ring: a position
        # below it would miss that change.
        self._dropped: dict[TopicPartition, int] = {}

    def extend(self, changes: Iterable[Change]) -> None:
        ring = self._changes
        ring.extend([c for c in changes if c.source is not None])  # only message-caused changes replay
        surplus = len(ring) - self._capacity
        dropped = self._dropped
        for _ in range(max(0, surplus)):
            gone = ring.popleft().source
            assert gone is not None
            key = (gone.topic, gone.partition)
            if dropped.get(key, 0) <= gone.offset:
                dropped[key] = gone.offset + 1

    def since(self, position: Position) -> list[Change]:
        """Every retained change that ``position`` does not cover; raises PositionExpired if some
        change it does not cover was already dropped."""
        for (topic, partition), end in self._dropped.items():
            if position.next_offset(topic, partition) < end:
                raise PositionExpired(
                    f"changes after {topic}[{partition}]@{position.next_offset(topic, partition)} "
                    f"are no longer retained; list again"
                )
        return [c for c in self._changes if c.source is not None and not position.covers(c.source)]

    def __len__(self) -> int:
        return len(self._changes)
