"""How the batches the pipeline takes together are cut into its snapshot readers' groups.

A reader reads a group's domains together (each one's XML, then their states in one request, see
:mod:`bridge.agent.snapshot`): larger groups cost fewer round-trips, more groups keep more readers
busy. Pure, so property tests can hammer it.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

GROUP_MAX = 16
"""Reads one reader takes at a time: N domains cost N + 1 round-trips."""


def read_groups(reads: list[T], readers: int, most: int) -> list[list[T]]:
    """``reads`` in order, in groups of at most ``most`` and sizes one apart: one group per reader
    (or per read, when fewer), more only when the groups would be larger than ``most``."""
    count = min(len(reads), max(readers, -(-len(reads) // most)))
    if not count:
        return []
    size, larger = divmod(len(reads), count)
    groups, first = [], 0
    for n in range(count):
        last = first + size + (n < larger)
        groups.append(reads[first:last])
        first = last
    return groups
