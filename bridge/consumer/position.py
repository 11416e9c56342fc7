"""Where a reader is in the log: the next offset of every (topic, partition) it reads.

A :class:`Position` is the consumer's ``resourceVersion``: a snapshot says which position it reflects,
and a watch resumes after one. Offsets name Kafka messages; :class:`Offset` is one message's address.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

TopicPartition = tuple[str, int]


class Offset(NamedTuple):
    """The address of one message (a named tuple: one is made for every message read)."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Position(Mapping[TopicPartition, int]):
    """Immutable map of (topic, partition) to the next offset to read.

    A partition that is absent has not been read at all: reading it starts at its beginning.
    The text form (:meth:`encode`) is ``topic:partition:offset`` items joined by commas; Kafka topic
    names cannot contain ``:`` or ``,``.
    """

    __slots__ = ("_offsets",)

    def __init__(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        items = dict(offsets or {})
        for (topic, partition), offset in items.items():
            if not topic or partition < 0 or offset < 0:
                raise ValueError(f"bad position item {topic}:{partition}:{offset}")
        # Sorted so that equal positions encode to the same text.
        self._offsets: dict[TopicPartition, int] = dict(sorted(items.items()))

    def __getitem__(self, key: TopicPartition) -> int:
        return self._offsets[key]

    def __iter__(self) -> Iterator[TopicPartition]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __hash__(self) -> int:
        return hash(tuple(self._offsets.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Position):
            return self._offsets == other._offsets
        return NotImplemented

    def __repr__(self) -> str:
        return f"Position({self.encode()!r})"

    def next_offset(self, topic: str, partition: int) -> int:
        """The next offset to read in that partition (0, the beginning, if it is absent)."""
        return self._offsets.get((topic, partition), 0)

    def covers(self, offset: Offset) -> bool:
        """True if the message at ``offset`` is already reflected by this position."""
        return offset.offset < self.next_offset(offset.topic, offset.partition)

    def advanced(self, updates: Mapping[TopicPartition, int]) -> Position:
        """A copy moved forward to ``updates``; offsets never move back."""
        merged = dict(self._offsets)
        for key, offset in updates.items():
            merged[key] = max(offset, merged.get(key, 0))
        return Position(merged)

    def encode(self) -> str:
        """Text form, e.g. ``libvirt.domains:0:42,libvirt.hosts:0:7``."""
        return ",".join(f"{t}:{p}:{o}" for (t, p), o in self._offsets.items())

    @classmethod
    def decode(cls, text: str) -> Position:
        """Parse :meth:`encode`'s text; raises ValueError on anything else."""
        items: dict[TopicPartition, int] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            parts = item.rsplit(":", 2)
            if len(parts) != 3:
                raise ValueError(f"{item!r} is not topic:partition:offset")
            topic, partition, offset = parts
            try:
                items[(topic, int(partition))] = int(offset)
            except ValueError:
                raise ValueError(f"{item!r} is not topic:partition:offset") from None
        return cls(items)
