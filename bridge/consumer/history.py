"""The recent changes, so a watch can resume from a position a snapshot returned.

Kubernetes' watch cache in miniature: a bounded ring of changes, each tagged with the message that
caused it. A position older than the ring is *expired* (HTTP 410 Gone in Kubernetes): the reader must
list again.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable

from bridge.consumer.changes import Change
from bridge.consumer.position import Offset, Position, TopicPartition
from bridge.errors import BridgeError

# In C, for the loop over every change that leaves the ring (each has a source: see extend).
_SOURCE = operator.attrgetter("source")


class PositionExpired(BridgeError):
    """Changes after this position are no longer retained: take a new snapshot (``list()``)."""


class ChangeHistory:
    """The last ``capacity`` changes, in the order they happened."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._changes: deque[Change] = deque()  # message-caused ones only: each has its source
        self._capacity = capacity
        # Per partition, one past the newest offset of a change that fell out of the ring: a position
        # below it would miss that change.
        self._dropped: dict[TopicPartition, int] = {}

    def extend(self, changes: Iterable[Change]) -> None:
        ring = self._changes
        # Only message-caused changes replay; held as they are, not paired with their source: a pair
        # per change was one more object for the cyclic collector to count and walk.
        ring.extend([c for c in changes if c.source is not None])
        surplus = len(ring) - self._capacity
        if surplus <= 0:
            return
        popleft = ring.popleft
        dropped = self._dropped
        # The highest, not the last: a partition replayed from a lower offset (after a log truncation)
        # can put an older offset after a newer one.
        for topic, partition, offset in map(_SOURCE, [popleft() for _ in range(surplus)]):
            key = (topic, partition)
            if dropped.get(key, 0) <= offset:
                dropped[key] = offset + 1

    def since(self, position: Position) -> list[Change]:
        """Every retained change that ``position`` does not cover; raises PositionExpired if some
        change it does not cover was already dropped."""
        for (topic, partition), end in self._dropped.items():
            if position.next_offset(topic, partition) < end:
                raise PositionExpired(
                    f"changes after {topic}[{partition}]@{position.next_offset(topic, partition)} "
                    f"are no longer retained; list again"
                )
        return [c for c in self._changes if not position.covers(_source(c))]

    def __len__(self) -> int:
        return len(self._changes)


def _source(change: Change) -> Offset:
    source = change.source
    assert source is not None  # the ring holds message-caused changes only
    return source
