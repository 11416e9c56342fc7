"""A bounded table of one value per agent instance, shared by every record that agent wrote.

The DomainRecord reader keeps one :class:`~bridge.records.AgentInfo` per agent (the agents are most
of a record's objects, and a view of 100,000 domains holds a handful of distinct ones); the writer
keeps each agent's encoded bytes. A table is dropped whole when it outgrows any fleet's live agents:
only restarts add instances, so that is rare and costs one re-read per agent.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

MAX_AGENTS = 100_000


class AgentTable(Generic[V]):
    """One value per agent instance, keyed by whatever identifies it (its bytes, or the AgentInfo)."""

    def __init__(self, limit: int = MAX_AGENTS) -> None:
        self._limit = limit
        self._agents: dict[Hashable, V] = {}

    def get(self, key: Hashable) -> V | None:
        return self._agents.get(key)

    def add(self, key: Hashable, agent: V) -> V:
        if len(self._agents) >= self._limit:
            self._agents.clear()
        self._agents[key] = agent
        return agent
