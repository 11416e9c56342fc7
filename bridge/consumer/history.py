"""The recent changes, so a watch can resume from a position a snapshot returned.

Kubernetes' watch cache in miniature: a bounded ring of changes, each tagged with the message that
caused it. A position older than the ring is *expired* (HTTP 410 Gone in Kubernetes): the reader must
list again.

Expiry is kept per poll batch, not per change, so a change costs the ring one append in C: once a
batch's first change falls out of the ring, a position must reach that batch's end to replay from
the ring. That is exact for every position the view hands out, which all lie between batches; a
position inside a batch that lost changes is expired even where the changes it needs are still held
(listing again is then the cost, never a missed change).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from bridge.consumer.changes import Change
from bridge.consumer.position import Offset, Position
from bridge.errors import BridgeError


class PositionExpired(BridgeError):
    """Changes after this position are no longer retained: take a new snapshot (``list()``)."""


class ChangeHistory:
    """The last ``capacity`` changes, in the order they happened."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = capacity
        self._changes: deque[Change] = deque(maxlen=capacity)  # the deque drops the oldest itself
        self._added = 0  # changes ever added
        # Per batch with changes still in the ring: the index (in all changes ever added) of its first
        # change, and the position after the batch.
        self._batches: deque[tuple[int, Position]] = deque()
        self._expired_before: Position | None = None  # the end of the newest batch that lost changes

    def extend(self, changes: Sequence[Change], through: Position) -> None:
        """Add one poll batch's changes, each caused by a message (it has a source); ``through`` is
        the position after the batch (positions only move forward)."""
        if not changes:
            return
        self._changes.extend(changes)
        self._batches.append((self._added, through))
        self._added += len(changes)
        dropped = self._added - self._capacity
        batches = self._batches
        while batches and batches[0][0] < dropped:
            _, self._expired_before = batches.popleft()

    def since(self, position: Position) -> list[Change]:
        """Every retained change that ``position`` does not cover; raises PositionExpired if
        ``position`` does not reach the end of the newest batch that lost changes (module doc)."""
        expired = self._expired_before
        if expired is not None:
            for (topic, partition), end in expired.items():
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
