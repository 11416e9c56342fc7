"""A consistent, immutable copy of the view and the log position it reflects."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bridge.consumer.position import Position
from bridge.records import DomainRecord, HostRecord

_FORMAT = 1


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Snapshot:
    """Every domain in the view at ``position`` (the ``resourceVersion`` a watch can resume from).

    ``stale_hosts`` were judged at ``taken_at`` (microseconds since the epoch): their domains' state
    may be outdated, since those agents stopped reporting. ``unreachable_hosts`` said
    ``LIBVIRT_UNREACHABLE`` in their latest HostRecord: their agents run but cannot see libvirt. The
    domains of both are *unknown*: kept in the view, flagged, never deleted for it.
    """

    domains: Mapping[str, DomainRecord]
    hosts: Mapping[str, HostRecord]
    position: Position
    taken_at: int
    synced: bool
    stale_hosts: frozenset[str] = frozenset()
    unreachable_hosts: frozenset[str] = frozenset()
    deleted: Mapping[str, int] = field(default_factory=dict)
    """The graveyard (README glossary): uuid -> the highest version seen for a domain no longer in the
    view, which a resumed informer restores so an older record cannot bring the domain back."""

    def __post_init__(self) -> None:
        # Read-only views of private copies: a snapshot never changes after it is taken.
        object.__setattr__(self, "domains", _frozen(self.domains))
        object.__setattr__(self, "hosts", _frozen(self.hosts))
        object.__setattr__(self, "deleted", _frozen(self.deleted))

    def get(self, uuid: str) -> DomainRecord | None:
        return self.domains.get(uuid)

    def is_stale(self, uuid: str) -> bool:
        """True if the domain's host had stopped heartbeating when the snapshot was taken."""
        record = self.domains.get(uuid)
        return record is not None and record.host in self.stale_hosts

    def unknown_reason(self, uuid: str) -> str | None:
        """Why the domain's state is unknown (``"stale"``, ``"libvirt unreachable"``), or None if it is known."""
        record = self.domains.get(uuid)
        if record is None:
            return None
        if record.host in self.stale_hosts:
            return "stale"
        if record.host in self.unreachable_hosts:
            return "libvirt unreachable"
        return None

    def is_unknown(self, uuid: str) -> bool:
        """True if the domain is in the view but its host cannot vouch for its state right now."""
        return self.unknown_reason(uuid) is not None

    def records(self) -> list[DomainRecord]:
        """The domains sorted by host, then name, then UUID."""
        return sorted(self.domains.values(), key=lambda r: (r.host, r.name, r.uuid))

    def __len__(self) -> int:
        return len(self.domains)

    def __iter__(self) -> Iterator[DomainRecord]:
        return iter(self.records())

    def to_json(self) -> str:
        """Serialize, e.g. to persist a view and resume an informer from it after a restart."""
        return json.dumps({
            "format": _FORMAT,
            "position": self.position.encode(),
            "taken_at": self.taken_at,
            "synced": self.synced,
            "stale_hosts": sorted(self.stale_hosts),
            "unreachable_hosts": sorted(self.unreachable_hosts),
            "domains": [r.to_avro() for r in self.domains.values()],
            "hosts": [h.to_avro() for h in self.hosts.values()],
            "deleted": dict(self.deleted),
        })

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """Parse :meth:`to_json`'s output; raises ValueError on anything else."""
        try:
            d = json.loads(text)
            if d.get("format") != _FORMAT:
                raise ValueError(f"unsupported snapshot format {d.get('format')!r}")
            return cls(
                domains={r.uuid: r for r in (DomainRecord.from_avro(x) for x in d["domains"])},
                hosts={h.host: h for h in (HostRecord.from_avro(x) for x in d["hosts"])},
                position=Position.decode(d["position"]),
                taken_at=int(d["taken_at"]),
                synced=bool(d["synced"]),
                stale_hosts=frozenset(d["stale_hosts"]),
                unreachable_hosts=frozenset(d.get("unreachable_hosts", ())),
                deleted={str(k): int(v) for k, v in d["deleted"].items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a snapshot: {exc}") from exc
