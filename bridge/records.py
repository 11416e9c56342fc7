"""The record envelope: what the agent publishes and consumers read.

Plain, immutable dataclasses mirroring ``schemas/*.avsc``. Conversion to and from the Avro
dict form lives here so that every other module deals in typed values only.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.slot_builder import slot_builder

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordKind(enum.StrEnum):
    """Why a DomainRecord was published."""

    EVENT = "EVENT"
    RESYNC = "RESYNC"
    DELETED = "DELETED"


_KINDS = {k.value: k for k in RecordKind}
"""Symbol -> RecordKind, a dict lookup (calling the enum costs more than the rest of a field)."""


class HostStatus(enum.StrEnum):
    """Liveness status an agent reports for its host."""

    UP = "UP"
    STOPPING = "STOPPING"
    LIBVIRT_UNREACHABLE = "LIBVIRT_UNREACHABLE"
    """The agent runs but cannot reach libvirt: the host's domains are unknown, not gone."""


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """The publishing agent instance."""

    instance_id: str
    software_version: str
    libvirt_version: str

    def to_avro(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "software_version": self.software_version,
            "libvirt_version": self.libvirt_version,
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> AgentInfo:
        return cls(str(d["instance_id"]), str(d["software_version"]), str(d["libvirt_version"]))


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One libvirt domain event as received by the agent's callback."""

    id: str
    received_at: int
    """Microseconds since the epoch."""
    type: str | None = None
    detail: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)

    def to_avro(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "detail": self.detail,
            "data": dict(self.data),
            "received_at": self.received_at,
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> DomainEvent:
        return cls(
            id=str(d["id"]),
            received_at=_micros(d["received_at"]),
            type=d.get("type"),
            detail=d.get("detail"),
            data=dict(d.get("data") or {}),
        )

    def label(self) -> str:
        """Short human form: ``LIFECYCLE STARTED/BOOTED`` or ``REBOOT``."""
        if self.type is None:
            return self.id
        return f"{self.type}/{self.detail}" if self.detail else self.type


@dataclass(frozen=True, slots=True)
class DomainRecord:
    """The state of one domain at one version, as the owning host's agent read it."""

    uuid: str
    name: str
    host: str
    version: int
    kind: RecordKind
    agent: AgentInfo
    observed_at: int
    events: tuple[DomainEvent, ...] = ()
    events_elided: int = 0
    state: str | None = None
    reason: str | None = None
    active: bool = False
    persistent: bool = False
    xml: str | None = None
    resync_id: str | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "host": self.host,
            "version": self.version,
            "kind": self.kind.value,
            "events": [e.to_avro() for e in self.events],
            "events_elided": self.events_elided,
            "state": self.state,
            "reason": self.reason,
            "active": self.active,
            "persistent": self.persistent,
            "xml": self.xml,
            "observed_at": self.observed_at,
            "agent": self.agent.to_avro(),
            "resync_id": self.resync_id,
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any], agent: AgentInfo | None = None) -> DomainRecord:
        """The record of an Avro dict; ``agent``, if given, stands for ``d["agent"]`` (a reader that
        decodes many records shares one AgentInfo per agent instead of one per record)."""
        # The few distinct hosts, states, reasons and resync ids are interned: a view of 100,000
        # domains would otherwise hold 100,000 copies of "RUNNING".
        state, reason, resync_id = d.get("state"), d.get("reason"), d.get("resync_id")
        events = d.get("events")
        return cls(
            uuid=str(d["uuid"]),
            name=str(d["name"]),
            host=sys.intern(str(d["host"])),
            version=int(d["version"]),
            kind=_KINDS[d["kind"]],
            agent=agent if agent is not None else AgentInfo.from_avro(d["agent"]),
            observed_at=_micros(d["observed_at"]),
            events=tuple(DomainEvent.from_avro(e) for e in events) if events else (),
            events_elided=int(d.get("events_elided") or 0),
            state=None if state is None else sys.intern(state),
            reason=None if reason is None else sys.intern(reason),
            active=bool(d.get("active")),
            persistent=bool(d.get("persistent")),
            xml=d.get("xml"),
            resync_id=None if resync_id is None else sys.intern(resync_id),
        )


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    """A domain a host owned when it listed, with the version of its RESYNC record."""

    uuid: str
    version: int


_new_entry = slot_builder(InventoryEntry)  # a fleet's HostRecords hold 100,000 of them


@dataclass(frozen=True, slots=True)
class HostRecord:
    """Liveness and the latest completed inventory of one host."""

    host: str
    agent: AgentInfo
    heartbeat_at: int
    status: HostStatus = HostStatus.UP
    resync_id: str | None = None
    listed_at: int | None = None
    domains: tuple[InventoryEntry, ...] = ()
    heartbeat_interval_ms: int = 30_000
    signal_id: str | None = None
    """The resync signal the inventory's resync answered (``libvirt-kafka-bridge resync``), if any."""

    def to_avro(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "agent": self.agent.to_avro(),
            "heartbeat_at": self.heartbeat_at,
            "status": self.status.value,
            "resync_id": self.resync_id,
            "listed_at": self.listed_at,
            "domains": [{"uuid": e.uuid, "version": e.version} for e in self.domains],
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "signal_id": self.signal_id,
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> HostRecord:
        listed_at = d.get("listed_at")
        return cls(
            host=str(d["host"]),
            agent=AgentInfo.from_avro(d["agent"]),
            heartbeat_at=_micros(d["heartbeat_at"]),
            status=HostStatus(d.get("status") or "UP"),
            resync_id=d.get("resync_id"),
            listed_at=None if listed_at is None else int(listed_at),
            domains=tuple([_new_entry(str(e["uuid"]), int(e["version"])) for e in d.get("domains") or ()]),
            heartbeat_interval_ms=int(d.get("heartbeat_interval_ms") or 30_000),
            signal_id=d.get("signal_id"),
        )


def _micros(value: Any) -> int:
    """Avro timestamp-micros as int (a datetime if a caller decoded with logical types on)."""
    if isinstance(value, datetime):
        return (value - _EPOCH) // timedelta(microseconds=1)
    return int(value)
