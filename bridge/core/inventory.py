"""Collecting one resync's inventory: which owned domains were listed, at which versions.

A resync takes ``listed_at`` from the version clock, lists the host's domains and asks for a fresh
record of each one it owns. Each record's version joins the inventory when the pipeline assigns it;
the inventory is complete once every listed domain's record is acknowledged, or the domain turned
out to be gone or handed off. Only then is the HostRecord published: a consumer that applies it drops
domains of this host older than ``listed_at`` and absent from it, repairing deletes missed while the
agent was down or disconnected.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.records import InventoryEntry


class ResyncTracker:
    """The inventory of one resync in progress. Pure; owned by the pipeline thread."""

    def __init__(self, resync_id: str, listed_at: int, uuids: Iterable[str]) -> None:
        self.resync_id = resync_id
        self.listed_at = listed_at
        self._waiting = set(uuids)
        self._versions: dict[str, int] = {}
        self._acked: set[str] = set()

    def assigned(self, uuid: str, version: int) -> None:
        """The record serving this resync for ``uuid`` got ``version`` (it is about to be produced)."""
        if uuid in self._waiting:
            self._versions[uuid] = version

    def acked(self, uuid: str) -> None:
        """That record was acknowledged by Kafka."""
        if uuid in self._versions:
            self._waiting.discard(uuid)
            self._acked.add(uuid)

    def dropped(self, uuid: str) -> None:
        """``uuid`` left the inventory: it is gone, or no longer this host's to publish."""
        self._waiting.discard(uuid)
        self._versions.pop(uuid, None)
        self._acked.discard(uuid)

    @property
    def complete(self) -> bool:
        return not self._waiting

    @property
    def outstanding(self) -> int:
        return len(self._waiting)

    def inventory(self) -> tuple[InventoryEntry, ...]:
        """The acknowledged entries, sorted by UUID."""
        return tuple(InventoryEntry(u, self._versions[u]) for u in sorted(self._acked))
